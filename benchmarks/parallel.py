"""Speed of each parallel mode on this machine: steps/s, samples/s, communication share, accuracy.

For one process and for every mode and worker count that fits the machine's cores, trains
``seed-mlp`` for a fixed number of steps through the real launcher (``torch.distributed.run``) and
the one training loop, then prints a table with the machine's description::

    python benchmarks/parallel.py --steps 1000
    python benchmarks/parallel.py --steps 2000 --max-workers 4

"communication" is the share of the main rank's wall time inside the backend's communication ops
(``gloo:*`` / ``nccl:*`` events of ``torch.profiler`` over a window of steps, waiting for a peer
included); DDP overlaps its all-reduce with the backward pass, so the share can exceed what the
step loses to it. async shares memory and has no communication at all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_data, machine  # noqa: E402

HERE = Path(__file__).resolve()


def configurations(max_workers: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"mode": "none", "workers": 1}]
    for n in (2, 4, 8):
        if n > max_workers:
            break
        rows += [
            {"mode": "data", "workers": n},
            {"mode": "async", "workers": n},
            {"mode": "tensor", "workers": n},
        ]
    if max_workers >= 2:
        rows += [
            {"mode": "pipeline", "workers": 2, "schedule": "gpipe", "microbatches": 4},
            {"mode": "pipeline", "workers": 2, "schedule": "1f1b", "microbatches": 4},
        ]
    return rows


# -- inside one worker ---------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    """Train one configuration (in a torchrun worker, or alone for ``none``) and report."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from mnistlab.config import resolve
    from mnistlab.data import load_splits
    from mnistlab.io.callbacks import Callback, Wants
    from mnistlab.parallel import make_parallel_strategy
    from mnistlab.training import train

    class Window(Callback):
        """Profiles steps [n, 2n) of the main rank's loop, n a quarter of the steps this process
        runs (an async worker runs its share of them), at most 200."""

        def __init__(self) -> None:
            self.start = self.end = 0
            self.prof: Any = None
            self.comm_share = 0.0

        def wants(self, run: Any) -> Wants:
            length = max(1, min(200, run.config.train.steps // 4))
            self.start, self.end = length, 2 * length
            # Make the window's first and last steps boundaries the hooks see.
            return Wants(histogram_every=length)

        def on_boundary(self, run: Any, steps_done: int) -> None:
            if run.step == self.start:
                self.prof = profile(activities=[ProfilerActivity.CPU])
                self.prof.__enter__()
                self.began = _now()
            elif run.step == self.end and self.prof is not None:
                self.prof.__exit__(None, None, None)
                wall = _now() - self.began
                comm = (
                    sum(
                        e.cpu_time_total
                        for e in self.prof.key_averages()
                        if e.key.startswith(("gloo:", "nccl:"))
                    )
                    / 1e6
                )
                self.comm_share = min(1.0, comm / wall) if wall > 0 else 0.0

    overrides = [
        f"train.steps={args.steps}",
        f"train.eval_every={args.steps}",
        f"train.threads={args.threads}",
        f"parallel.mode={args.mode}",
        f"parallel.schedule={args.schedule}",
        f"parallel.microbatches={args.microbatches}",
    ]
    config = resolve("seed-mlp", None, overrides)
    data = load_splits(args.dataset, args.data_dir)
    strategy = make_parallel_strategy(config)
    window = Window()
    result = train(config, data, strategy=strategy, callbacks=[window])
    if strategy is None or strategy.is_main:
        total_steps = args.steps  # async: all workers' updates together
        seconds = result.train_seconds
        Path(args.out).write_text(
            json.dumps(
                {
                    "steps_per_s": total_steps / seconds,
                    "samples_per_s": total_steps * 100 / seconds,
                    "comm_share": window.comm_share,
                    "test_accuracy": result.test.accuracy if result.test else None,
                    "threads": torch.get_num_threads(),
                }
            )
        )


def _now() -> float:
    import time

    return time.perf_counter()


# -- the driver ----------------------------------------------------------------------------------
def run_one(row: dict[str, Any], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    common = [
        "--worker",
        "--mode",
        row["mode"],
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--dataset",
        args.dataset,
        "--out",
        str(out),
        "--schedule",
        row.get("schedule", "gpipe"),
        "--microbatches",
        str(row.get("microbatches", 1)),
    ]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    if row["mode"] == "none":
        cmd = [sys.executable, str(HERE), *common]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={row['workers']}",
            str(HERE),
            *common,
        ]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data-dir", default=None)
    # worker side
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--schedule", default="gpipe", help=argparse.SUPPRESS)
    parser.add_argument("--microbatches", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    dataset, data_dir = default_data()
    args.dataset, args.data_dir = args.dataset or dataset, args.data_dir or data_dir
    if args.worker:
        worker(args)
        return
    print(f"machine: {machine()}")
    print(
        f"seed-mlp on {args.dataset}, {args.steps} steps of 100 (async: updates of all workers "
        f"together), {args.threads} torch thread(s) per process, gloo on the CPU"
    )
    header = (
        f"{'mode':<22} {'workers':>7} {'steps/s':>9} {'samples/s':>10} {'comm':>6} {'test acc':>9}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(configurations(args.max_workers)):
            r = run_one(row, args, Path(tmp) / f"{i}.json")
            name = row["mode"] + (
                f" {row['schedule']} M={row['microbatches']}" if row["mode"] == "pipeline" else ""
            )
            if "error" in r:
                print(f"{name:<22} {row['workers']:>7}  failed: {r['error']}")
                continue
            print(
                f"{name:<22} {row['workers']:>7} {r['steps_per_s']:>9.1f} "
                f"{r['samples_per_s']:>10,.0f} {100 * r['comm_share']:>5.0f}% "
                f"{100 * r['test_accuracy']:>8.2f}%",
                flush=True,
            )


if __name__ == "__main__":
    main()
