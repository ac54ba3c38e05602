"""Cost of tracking: steps/s of seed-mlp with and without TensorBoard events and metrics.jsonl.

Runs the ``seed-mlp`` preset for N steps at the default intervals (log every 100 steps,
validation every 500, histograms every 1,000) through ``mnistlab.train.train``, once with no
callbacks and once with ``TrackingCallback`` writing into a temporary run folder, interleaved so
drift in the machine's speed hits both. "With tracking" includes everything the callback adds:
the raw-weight validation it asks for, train-batch accuracy, the misclassified grid, histograms,
the graph and hparams. Prints the median steps/s of both and the overhead (target: under 5%).

    python benchmarks/tracking.py --steps 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_data, machine  # noqa: E402
from mnistlab.config import resolve  # noqa: E402
from mnistlab.data import load_splits  # noqa: E402
from mnistlab.io.tracking import TrackingCallback  # noqa: E402
from mnistlab.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset, data_dir = default_data()
    dataset, data_dir = args.dataset or dataset, args.data_dir or data_dir
    print(f"machine: {machine()}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else args.device if args.device != "auto" else "cpu")
    data = load_splits(dataset, data_dir, device=device)
    config = resolve("seed-mlp", None, [f"train.steps={args.steps}", f"train.device={device}"])
    t = config.train
    print(f"data: {data.name} ({len(data.train):,} train, {len(data.validation):,} validation) "
          f"on {device}; log every {t.log_every}, eval every {t.eval_every}, histograms every "
          f"{config.tracking.histogram_every} steps")

    plain: list[float] = []
    tracked: list[float] = []
    walls: dict[str, list[float]] = {"plain": [], "tracked": []}
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as tmp:
        train(resolve("seed-mlp", None, ["train.steps=50", f"train.device={device}"]), data)  # warm-up
        for i in range(args.repeats):
            result = train(config, data)
            plain.append(args.steps / result.train_seconds)
            walls["plain"].append(result.wall_seconds)
            result = train(config, data, callbacks=[TrackingCallback(Path(tmp) / f"run{i}")])
            tracked.append(args.steps / result.train_seconds)
            walls["tracked"].append(result.wall_seconds)
    p, w = statistics.median(plain), statistics.median(tracked)
    wall_p, wall_w = statistics.median(walls["plain"]), statistics.median(walls["tracked"])
    print(f"seed-mlp, {args.steps} steps of {t.batch_size}, {args.repeats} interleaved repeats "
          "(median):")
    print(f"  without tracking : {p:8.1f} steps/s  (runs: {', '.join(f'{v:.1f}' for v in plain)})")
    print(f"  with tracking    : {w:8.1f} steps/s  (runs: {', '.join(f'{v:.1f}' for v in tracked)})")
    print(f"  overhead: {100 * (p / w - 1):+.2f}% time per step  (target: under 5%)")
    print(f"  whole train() call, set-up and final test included: {wall_p:.2f} s vs {wall_w:.2f} s "
          f"({100 * (wall_w / wall_p - 1):+.2f}%)")


if __name__ == "__main__":
    main()
