"""How far each preset's loss climbs above its first value: the margin of the divergence check.

The training loop stops a run whose loss rises above ``train.steps.DIVERGENCE_FACTOR`` times its
start (``loss_ceiling``), so a finite but absurd loss (speedrun at lr 1000: 1e23) does not pass
silently. This prints, for each preset, the first logged loss, the highest and where it was,
with every step logged (``train.log_every=1``), so the factor can be checked against runs that
work. ``naive`` is seed-softmax with ``train.loss=naive``, which ends at an infinite loss.

    python benchmarks/loss_peaks.py                       # every preset at its own length
    python benchmarks/loss_peaks.py seed-mlp-book:3000 lenet:500
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_data, machine  # noqa: E402
from mnistlab.config import resolve  # noqa: E402
from mnistlab.data import load_splits  # noqa: E402
from mnistlab.errors import TrainingError  # noqa: E402
from mnistlab.io.callbacks import Callback, LogRecord, RunView  # noqa: E402
from mnistlab.training import train  # noqa: E402
from mnistlab.training.steps import DIVERGENCE_FACTOR  # noqa: E402

RUNS = [
    "seed-softmax:1000",
    "naive:1000",
    "speedrun:1289",
    "seed-mlp:30000",
    "seed-mlp-book:30000",
    "lenet:2000",
]


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_log(self, run: RunView, record: LogRecord) -> None:
        self.values.append(record.data_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", default=RUNS, help="PRESET:STEPS (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    dataset, data_dir = default_data()
    print(f"machine: {machine()}; data: {dataset}; divergence factor {DIVERGENCE_FACTOR:g}")
    data = load_splits(dataset, data_dir)
    for spec in args.runs:
        name, _, steps = spec.partition(":")
        preset, extra = ("seed-softmax", ["train.loss=naive"]) if name == "naive" else (name, [])
        settings = [
            f"train.steps={steps or 1000}",
            "train.log_every=1",
            "train.eval_every=1000000",
            f"train.threads={args.threads}",
            *extra,
        ]
        config = resolve(preset, None, settings)
        losses, began = Losses(), time.perf_counter()
        try:
            train(config, data, callbacks=[losses])
            end = "finished"
        except TrainingError as exc:
            end = str(exc).split(";")[0]
        values = [v for v in losses.values if math.isfinite(v)]
        peak = max(values)
        print(
            f"{name:14s} {config.train.steps:6d} steps  first {values[0]:.4f}  peak {peak:.4f} "
            f"at step {values.index(peak) + 1}  peak/first {peak / values[0]:.3f}  "
            f"({time.perf_counter() - began:.0f} s) {end}",
            flush=True,
        )


if __name__ == "__main__":
    main()
