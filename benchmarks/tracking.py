"""Cost of tracking: steps/s of seed-mlp with and without TensorBoard events and metrics.jsonl.

Runs the ``seed-mlp`` preset for N steps at the default intervals (log every 100 steps,
validation every 500, histograms every 1,000) through ``mnistlab.training.train``, once with no
callbacks and once with ``TrackingCallback`` writing into a temporary run folder, interleaved so
drift in the machine's speed hits both. "With tracking" includes everything the callback adds:
the raw-weight validation it asks the loop for, train-batch accuracy, the misclassified grid,
histograms, scalars and metrics.jsonl (the graph and hparams are written outside the timed loop).

Two figures, because a shared machine's load can swing steps/s by tens of percent between runs:
- A/B: median (and best) steps/s with and without tracking;
- in-run: inside each tracked run, the seconds spent in the callback's hooks and in the extra
  raw-weight validation, against the rest of that same run's training time. Load hits both sides
  of this ratio alike, so it is the stable one. Target: under 5%.

    python benchmarks/tracking.py --steps 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_run_args, start  # noqa: E402
from mnistlab.config import resolve  # noqa: E402
from mnistlab.data import load_splits  # noqa: E402
from mnistlab.io.callbacks import Callback  # noqa: E402
from mnistlab.io.tracking import TrackingCallback  # noqa: E402
from mnistlab.parallel import Strategy  # noqa: E402
from mnistlab.training import train  # noqa: E402


class Timed(Callback):
    """Runs ``inner``'s hooks and adds up the seconds each takes."""

    def __init__(self, inner: Callback):
        self.inner = inner
        self.seconds: dict[str, float] = defaultdict(float)

    def _call(self, hook: str, *args: Any) -> None:
        began = time.perf_counter()
        getattr(self.inner, hook)(*args)
        self.seconds[hook] += time.perf_counter() - began

    def wants(self, run: Any) -> Any:
        return self.inner.wants(run)

    def on_start(self, run: Any) -> None:
        self._call("on_start", run)

    def on_boundary(self, run: Any, steps_done: int) -> None:
        self._call("on_boundary", run, steps_done)

    def on_log(self, run: Any, record: Any) -> None:
        self._call("on_log", run, record)

    def on_eval(self, run: Any, record: Any) -> None:
        self._call("on_eval", run, record)

    def on_end(self, run: Any, result: Any) -> None:
        self._call("on_end", run, result)


class RawEvalTimer(Strategy):
    """The one-process strategy, timing the raw-weight validations the loop makes for tracking."""

    def __init__(self, device: torch.device, validation: torch.Tensor):
        super().__init__(device)
        self.validation = validation
        self.raw_seconds = 0.0

    def predict(
        self, images: torch.Tensor, params: Any = None, batch_size: int = 10_000
    ) -> torch.Tensor | None:
        began = time.perf_counter()
        out = super().predict(images, params, batch_size)
        if params is None and images is self.validation:
            self.raw_seconds += time.perf_counter() - began
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, steps=2000, repeats=5)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    args = parser.parse_args()
    dataset, data_dir = start(args)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    data = load_splits(dataset, data_dir, device=device)
    config = resolve("seed-mlp", None, [f"train.steps={args.steps}", f"train.device={device}"])
    t = config.train
    print(
        f"data: {data.name} ({len(data.train):,} train, {len(data.validation):,} validation) "
        f"on {device}; log every {t.log_every}, eval every {t.eval_every}, histograms every "
        f"{config.tracking.histogram_every} steps"
    )

    plain: list[float] = []
    tracked: list[float] = []
    in_run: list[float] = []
    writing: list[float] = []
    parts: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as tmp:
        train(
            resolve("seed-mlp", None, ["train.steps=50", f"train.device={device}"]), data
        )  # warm-up
        for i in range(args.repeats):
            plain.append(args.steps / train(config, data).train_seconds)
            timed = Timed(TrackingCallback(Path(tmp) / f"run{i}"))
            strategy = RawEvalTimer(device, data.validation.images)
            result = train(config, data, strategy=strategy, callbacks=[timed])
            tracked.append(args.steps / result.train_seconds)
            hooks = sum(v for k, v in timed.seconds.items() if k not in ("on_start", "on_end"))
            base = result.train_seconds - hooks - strategy.raw_seconds
            in_run.append((hooks + strategy.raw_seconds) / base)
            writing.append(hooks / base)
            parts["raw-weight validation"].append(strategy.raw_seconds / args.steps)
            for hook in ("on_log", "on_eval", "on_boundary"):
                parts[hook].append(timed.seconds[hook] / args.steps)
    p, w = statistics.median(plain), statistics.median(tracked)
    print(f"seed-mlp, {args.steps} steps of {t.batch_size}, {args.repeats} interleaved repeats:")
    print(
        f"  A/B without tracking : median {p:7.1f} steps/s, best {max(plain):7.1f}  "
        f"(runs: {', '.join(f'{v:.0f}' for v in plain)})"
    )
    print(
        f"  A/B with tracking    : median {w:7.1f} steps/s, best {max(tracked):7.1f}  "
        f"(runs: {', '.join(f'{v:.0f}' for v in tracked)})"
    )
    print(
        f"  A/B overhead: {100 * (p / w - 1):+.2f}% (medians), "
        f"{100 * (max(plain) / max(tracked) - 1):+.2f}% (best runs); noisy on a shared machine"
    )
    print(
        f"  in-run overhead, all of it: median {100 * statistics.median(in_run):.2f}% of training "
        f"time (runs: {', '.join(f'{100 * v:.2f}%' for v in in_run)})  (target: under 5%)"
    )
    print(
        f"  of which writing logs (the callback's hooks): median "
        f"{100 * statistics.median(writing):.2f}%; the rest is the raw-weight validation"
    )
    for name, values in parts.items():
        print(f"    {name:22s} {1e6 * statistics.median(values):7.1f} us per training step")


if __name__ == "__main__":
    main()
