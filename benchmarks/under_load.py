"""mnistlab beside another job on the same cores: the slowdown should follow the cores lost.

Runs ``mnistlab train`` (seed-softmax, 1,000 steps, and seed-mlp, 2,000 steps) as a user would,
first on a quiet machine, then beside one busy process per ``--busy`` (a Python loop that never
sleeps), each with mnistlab's thread choice (``train.threads=0``: the cores this process may use
less those other jobs hold when training starts) and with threads fixed at every core (what torch
does by default), and prints the training time of each and its ratio to quiet.

    python benchmarks/under_load.py [--busy 1] [--repeats 3]

On a machine with C cores, B busy processes leave mnistlab about C/(C+B) of the machine when the
scheduler shares fairly, so the slowdown a user should expect is about (C+B)/C: 1.5x for one
busy process on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_data, machine  # noqa: E402

BUSY = "while True:\n    pass\n"
SETTINGS = {
    "threads chosen by mnistlab": "train.threads=0",
    "threads = all cores": f"train.threads={len(os.sched_getaffinity(0))}",
}


def train_seconds(preset: str, steps: int, data: list[str], threads: str) -> float:
    cmd = [sys.executable, "-m", "mnistlab", "train", "--preset", preset, "--json", "--quiet"]
    cmd += ["--set", threads]
    cmd += ["--no-tensorboard", "--set", f"train.steps={steps}", "--set", "checkpoint.every=0"]
    with tempfile.TemporaryDirectory() as run_dir:
        cmd += ["--run-dir", str(Path(run_dir) / "r"), *data]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["train_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=1, help="busy processes beside mnistlab")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dataset, data_dir = default_data()
    data = ["--dataset", dataset] + (["--data-dir", data_dir] if data_dir else [])
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {machine()}; {cores} cores available to this process")
    print(f"dataset: {dataset}; median of {args.repeats} runs; busy processes: {args.busy}")
    print(f"a fair share predicts a slowdown of about {(cores + args.busy) / cores:.2f}x")
    for preset, steps in (("seed-softmax", 1000), ("seed-mlp", 2000)):
        for name, extra in SETTINGS.items():
            quiet = statistics.median(
                train_seconds(preset, steps, data, extra) for _ in range(args.repeats)
            )
            busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
            try:
                loaded = statistics.median(
                    train_seconds(preset, steps, data, extra) for _ in range(args.repeats)
                )
            finally:
                for p in busy:
                    p.kill()
                    p.wait()
            print(
                f"  {preset:12s} {steps:5d} steps, {name:24s}: quiet {quiet:6.2f} s, "
                f"beside the busy job {loaded:6.2f} s ({loaded / quiet:5.2f}x)",
                flush=True,
            )


if __name__ == "__main__":
    main()
