"""Checkpoint formats side by side: save time, load time and file size of format 1 (``torch.save``
pickle behind a JSON header) and format 2 (safetensors + JSON), for seed-mlp and lenet.

For each preset it trains a few steps (so the optimizer has its state) on the data the run would
use, takes the consolidated ``Run.state_dict()``, and then, interleaved so drift in the machine's
speed hits both formats alike:

- save: serialize and write atomically (temp file, fsync, rename, fsync the folder);
- load: ``load_checkpoint`` as every reader calls it (checksum, decode, and the checks of
  ``trust.check_state``), and the checks alone.

It prints medians over ``--repeats`` and the machine with its load average (these figures are
for comparing the two formats on one machine, not for comparing machines).

    python benchmarks/checkpoints.py --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_data, machine  # noqa: E402
from mnistlab.config import resolve  # noqa: E402
from mnistlab.data import load_splits  # noqa: E402
from mnistlab.io.callbacks import Callback, Wants  # noqa: E402
from mnistlab.io.checkpoint import fileformat, load_checkpoint  # noqa: E402
from mnistlab.io.checkpoint.trust import check_state  # noqa: E402
from mnistlab.training import train  # noqa: E402

PRESETS = ("seed-mlp", "lenet")


class Grab(Callback):
    """Keeps the last consolidated state the loop hands to checkpoint callbacks."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def wants(self, run: Any) -> Wants:
        return Wants(checkpoints=True)

    def on_checkpoint(self, run: Any, state: dict[str, Any], *, periodic: bool, best: bool) -> None:
        self.state = state


def trained_state(preset: str, splits: Any, steps: int) -> dict[str, Any]:
    config = resolve(
        preset,
        None,
        [f"train.steps={steps}", f"train.eval_every={steps}", f"train.log_every={steps}"],
    )
    grab = Grab()
    train(config, splits, callbacks=[grab])
    assert grab.state is not None
    return grab.state


def timed(fn: Any) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def measure(state: dict[str, Any], folder: Path, repeats: int) -> dict[str, dict[str, float]]:
    writers = {1: fileformat.serialize_v1, 2: fileformat.serialize}
    seconds: dict[int, dict[str, list[float]]] = {
        v: {"save": [], "load": [], "checks": []} for v in writers
    }
    sizes = {}
    for _ in range(repeats):
        for version, serialize in writers.items():
            path = folder / f"v{version}.pt"
            seconds[version]["save"].append(
                timed(lambda: fileformat.atomic_write(path, serialize(state)))  # noqa: B023
            )
            sizes[version] = path.stat().st_size
            seconds[version]["load"].append(timed(lambda: load_checkpoint(path)))  # noqa: B023
            loaded = load_checkpoint(path)
            seconds[version]["checks"].append(
                timed(
                    lambda: check_state(loaded.state, loaded.header, path, (1, 28, 28))  # noqa: B023
                )
            )
    return {
        f"format {v}": {
            **{k: statistics.median(xs) for k, xs in seconds[v].items()},
            "bytes": sizes[v],
        }
        for v in writers
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="training steps before the state")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    dataset, data_dir = default_data()  # full MNIST beside the checkout, else the sample
    splits = load_splits(dataset, data_dir, download=False)
    print(f"data: {splits.name} ({len(splits.train):,} training images)")
    print(f"{'preset':<10} {'format':<9} {'size':>10} {'save':>9} {'load':>9} {'(checks)':>9}")
    for preset in PRESETS:
        state = trained_state(preset, splits, args.steps)
        with tempfile.TemporaryDirectory() as tmp:
            rows = measure(state, Path(tmp), args.repeats)
        for fmt, row in rows.items():
            print(
                f"{preset:<10} {fmt:<9} {row['bytes'] / 1e6:>7.2f} MB {1e3 * row['save']:>6.1f} ms "
                f"{1e3 * row['load']:>6.1f} ms {1e3 * row['checks']:>6.1f} ms"
            )


if __name__ == "__main__":
    main()
