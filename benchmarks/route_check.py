"""How far the fused step's routes (``train.route``) move seed-mlp's training from ``exact``.

Trains the preset for ``--steps`` steps (default 1,000) by each route, every step a logging
boundary, and compares each step's data loss with ``exact``'s (the step bit-equal to autograd):
the largest relative difference, the first step past 1e-5, and how the difference grows. The
same training in float64 (``exact`` with float64 data and weights) is the reference neither
float32 route is: each route's distance to it says whether a route is further from the true
trajectory than ``exact`` is, or only elsewhere on it. Ends with the test accuracies.

    python benchmarks/route_check.py                 # full MNIST from ../shared when present
    python benchmarks/route_check.py --steps 30000 --every 1000 --no-float64
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_data, machine  # noqa: E402
from mnistlab.config import resolve  # noqa: E402
from mnistlab.data import Splits, load_splits  # noqa: E402
from mnistlab.data.splits import Split  # noqa: E402
from mnistlab.io.callbacks import Callback  # noqa: E402
from mnistlab.training import build_run, train  # noqa: E402

GROWTH = (1, 10, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_log(self, run: Any, record: Any) -> None:
        self.values.append(record.data_loss)


def as_float64(data: Splits) -> Splits:
    def cast(s: Split) -> Split:
        return Split(s.images.double(), s.labels)

    return replace(data, train=cast(data.train), validation=cast(data.validation),
                   test=cast(data.test))  # fmt: skip


def settings_for(route: str, args: argparse.Namespace) -> list[str]:
    return [
        f"train.steps={args.steps}",
        f"train.route={route}",
        f"train.log_every={args.every}",
        f"train.threads={args.threads}",
        "train.device=cpu",
        "tracking.tensorboard=false",
        "tracking.jsonl=false",
    ]


def trajectory(
    route: str, data: Splits, args: argparse.Namespace, start: dict, dtype=torch.float32
) -> dict:
    """The route's losses from the float32 initial state ``start`` (for float64: cast up)."""
    config = resolve("seed-mlp", None, settings_for(route, args))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        rec = Losses()
        result = train(config, data, callbacks=[rec], resume_state=start)
    finally:
        torch.set_default_dtype(previous)
    test = result.test.accuracy if result.test else float("nan")
    return {"losses": torch.tensor(rec.values, dtype=torch.float64), "test": test,
            "engine": result.engine}  # fmt: skip


def compare(ours: torch.Tensor, ref: torch.Tensor, every: int) -> dict[str, Any]:
    rel = (ours - ref).abs() / ref.abs()
    over = torch.nonzero(rel > 1e-5)
    growth = {s: float(rel[: max(1, s // every)].max()) for s in GROWTH if s // every <= len(rel)}
    return {
        "max_rel": float(rel.max()),
        "at_step": (int(rel.argmax()) + 1) * every,
        "first_step_over_1e-5": (int(over[0]) + 1) * every if len(over) else None,
        "growth": growth,
    }


def main() -> int:
    dataset, data_dir = default_data()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=1, help="compare every N steps (log_every)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--routes", default="mkl,onednn,trimmed")
    p.add_argument("--dataset", default=dataset)
    p.add_argument("--data-dir", default=data_dir)
    p.add_argument("--no-float64", action="store_true", help="skip the float64 reference")
    p.add_argument("--out", default="benchmarks/out/route_check.json")
    args = p.parse_args()
    print(f"machine: {machine()}")
    data = load_splits(args.dataset, args.data_dir)
    # One float32 start for all: a float64 model would draw other initial weights.
    start = build_run(resolve("seed-mlp", None, settings_for("exact", args)), data).state_dict()
    runs = {"exact": trajectory("exact", data, args, start)}
    for route in args.routes.split(","):
        runs[route] = trajectory(route, data, args, start)
    if not args.no_float64:
        runs["float64"] = trajectory("exact", as_float64(data), args, start, torch.float64)
    report: dict[str, Any] = {"steps": args.steps, "every": args.every, "threads": args.threads}
    for route in args.routes.split(","):
        report[route] = compare(runs[route]["losses"], runs["exact"]["losses"], args.every)
    if "float64" in runs:
        for route in ["exact", *args.routes.split(",")]:
            report[f"{route}_vs_float64"] = compare(
                runs[route]["losses"], runs["float64"]["losses"], args.every
            )
    report["test_accuracy"] = {k: v["test"] for k, v in runs.items()}
    report["engines"] = {k: v["engine"] for k, v in runs.items()}
    for key, value in report.items():
        print(f"{key}: {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
