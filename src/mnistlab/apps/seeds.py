"""``mnistlab train --seeds 1-5``: the same settings trained once per seed, then statistics.

One accuracy from one seed says little: seed-softmax's test accuracy moves by a few tenths of a
point from seed to seed, more than many of the differences people argue about. So ``--seeds``
trains each seed in turn, keeps every seed's run folder (config, checkpoints, metrics,
TensorBoard events) under one parent folder, and reports mean, standard deviation, min/max and a
95% confidence interval (Student t) of test accuracy and of time: training (the loop,
validation included) and wall (from data loaded to the final test evaluation).

Seeds run one after another in this process, on data loaded once. They are not started as
parallel processes: on a machine with a few cores, torch already spreads one run over all of
them, and two runs side by side would only slow each other. Parallel modes (``--parallel``) are
refused with ``--seeds``; run each seed's parallel job on its own (``--set train.seed=N``).
Ctrl-C (or SIGTERM) stops the seed in progress at its next boundary (checkpoint saved, as a
single run does); the seeds already finished are kept and reported, and the exit status is 130
(143).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistlab.config import Config, set_value, validate
from mnistlab.errors import ConfigError, MnistlabError

MAX_SEEDS = 1000

# Two-sided 95% Student t quantiles t(0.975, df) for df = 1..30 (any statistics table).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """t(0.975, df): the table up to 30 degrees of freedom, then the Cornish-Fisher expansion
    about the normal quantile (error below 1e-4 there)."""
    if df < 1:
        raise ValueError("a t quantile needs at least one degree of freedom")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def parse_seeds(spec: str) -> list[int]:
    """``"1-5"`` -> [1, 2, 3, 4, 5]; ``"1,3,7"``; ``"1-3,10"``. Repeats and empty parts are
    refused, as is a range written backwards."""
    if not spec.strip():
        raise ConfigError("--seeds is empty: give the seeds to train, e.g. 1-5, 1,3,7 or 1-3,10")
    seeds: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo_text, hi_text = part.split("-", 1)
                lo, hi = int(lo_text), int(hi_text)
                if hi < lo:
                    raise ConfigError(f"--seeds {spec}: the range {part} runs backwards")
                if len(seeds) + (hi - lo + 1) > MAX_SEEDS:  # counted before it is built
                    raise ConfigError(f"--seeds {spec}: more than {MAX_SEEDS} seeds")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ConfigError(
                f"--seeds {spec}: {part!r} is not a seed or a range (write 1-5, 1,3,7 or 1-3,10)"
            ) from None
        if len(seeds) > MAX_SEEDS:
            raise ConfigError(f"--seeds {spec}: more than {MAX_SEEDS} seeds")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds {spec}: seed {repeated[0]} appears twice")
    negative = [s for s in seeds if s < 0]
    if negative:
        raise ConfigError(f"--seeds {spec}: seeds are 0 or more, got {negative[0]}")
    return seeds


def describe(values: list[float]) -> dict[str, Any]:
    """n, mean, sample standard deviation, min, max and the 95% Student t confidence interval of
    the mean (``None`` where one value cannot give it)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None, "ci95": None}
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else None
    ci = None
    if sd is not None:
        half = t_quantile_975(n - 1) * sd / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values), "ci95": ci}


@dataclass
class SeedReport:
    """What ``--seeds`` prints: one summary per finished seed, and the statistics."""

    preset: str
    dataset: str
    parent: Path
    requested: list[int]
    runs: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None

    def statistics(self) -> dict[str, dict[str, Any]]:
        def column(key: str) -> list[float]:
            return [float(r[key]) for r in self.runs if r.get(key) is not None]

        return {
            "test_accuracy": describe(column("test_accuracy")),
            "train_seconds": describe(column("train_seconds")),
            "wall_seconds": describe(column("wall_seconds")),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "dataset": self.dataset,
            "parent_dir": str(self.parent),
            "seeds_requested": self.requested,
            "seeds_finished": [r["seed"] for r in self.runs],
            "interrupted": self.stopped is not None,
            "stopped": self.stopped,
            "runs": self.runs,
            "statistics": self.statistics(),
        }

    def table(self) -> str:
        """Per-seed rows, then mean ± sd, min-max and the 95% interval."""
        head = f"{'seed':>6}  {'test acc':>9}  {'val acc':>9}  {'train s':>9}  {'samples/s':>10}"
        lines = [f"mnistlab {self.preset} on {self.dataset}: {len(self.runs)} seed(s)", head]
        for r in self.runs:
            lines.append(
                f"{r['seed']:>6}  {_pct(r.get('test_accuracy')):>9}  "
                f"{_pct(r.get('validation_accuracy')):>9}  {r['train_seconds']:>9.2f}  "
                f"{r['samples_per_second']:>10,.0f}"
            )
        stats = self.statistics()
        acc, secs = stats["test_accuracy"], stats["train_seconds"]
        if acc["n"]:
            lines.append("-" * len(head))
            lines.append(f"test accuracy: {_spread(acc, 100, '%', 2)}")
            lines.append(f"train time:    {_spread(secs, 1, ' s', 2)}")
            wall = _spread(stats["wall_seconds"], 1, " s", 2)
            lines.append(f"data loaded to final test: {wall}")
        lines.append(f"run folders under {self.parent}")
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _spread(d: dict[str, Any], scale: float, unit: str, digits: int) -> str:
    def f(x: float) -> str:
        return f"{x * scale:.{digits}f}"

    text = f"mean {f(d['mean'])}{unit}"
    if d["sd"] is not None:
        text += f" ± {f(d['sd'])} (sd)"
    text += f", min {f(d['min'])}, max {f(d['max'])}"
    if d["ci95"] is not None:
        lo, hi = d["ci95"]
        text += f", 95% CI [{f(lo)}, {f(hi)}]{unit} (Student t, n={d['n']})"
    else:
        text += " (one seed: no spread)"
    return text


def _refuse(args: argparse.Namespace, config: Config) -> None:
    if args.resume:
        raise ConfigError(
            "--seeds starts every seed afresh and cannot --resume; resume one seed's run "
            "with --resume PARENT/seed-N"
        )
    if config.parallel.mode != "none" or (config.parallel.workers or 1) > 1:
        raise ConfigError(
            "--seeds runs the seeds one after another in one process and cannot be combined "
            "with --parallel/--workers; run each seed's parallel job on its own "
            "(--set train.seed=N)"
        )
    if any(o.split("=", 1)[0].strip() == "train.seed" for o in args.overrides):
        raise ConfigError("--seeds sets train.seed for each run: drop --set train.seed")
    if getattr(args, "tensorboard", False):
        raise ConfigError(
            "--tensorboard serves one run; with --seeds, point TensorBoard at the parent "
            "folder afterwards (mnistlab board PARENT)"
        )


def parent_dir(args: argparse.Namespace, config: Config) -> Path:
    """``--run-dir`` is the parent; else ``runs/<date-time>-<preset>-seeds``."""
    from mnistlab.session import folder

    if args.run_dir:
        return Path(args.run_dir)
    return folder.new_run_dir(f"{config.preset}-seeds")


def run_seeds(args: argparse.Namespace, config: Config) -> int:
    """Train ``config`` once per seed of ``args.seeds``; print the table (and JSON)."""
    from mnistlab.apps.flags import tensorboard_events
    from mnistlab.session import RunRequest, folder, load_data, run_training
    from mnistlab.training import TrainingInterrupted

    seeds = parse_seeds(args.seeds)
    _refuse(args, config)
    for seed in seeds:  # every seed checked before the first one trains
        validate(set_value(config, "train.seed", seed))
    parent = parent_dir(args, config)
    folders = {seed: parent / f"seed-{seed}" for seed in seeds}
    for path in folders.values():
        folder.check_free(path, overwrite=args.overwrite)
    report = SeedReport(config.preset, "?", parent, seeds)
    exit_code = 0
    failure: MnistlabError | None = None
    seed = seeds[0]
    previous = _terminate_as_exception()
    try:
        config, data = load_data(config, quiet=args.quiet)
        report.dataset = data.name
        for i, seed in enumerate(seeds):
            seeded = set_value(config, "train.seed", seed)
            path = folders[seed]
            print(f"mnistlab: seed {seed} ({i + 1} of {len(seeds)}) in {path}", file=sys.stderr)
            request = RunRequest(
                seeded,
                path,
                overwrite=args.overwrite,
                quiet=args.quiet,
                tensorboard=tensorboard_events(args),
            )
            result = run_training(request, data=data).result
            report.runs.append({"seed": seed, **result.summary(), "run_dir": str(path)})
    except TrainingInterrupted as exc:
        report.stopped, exit_code = str(exc), exc.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C, or one between seeds
        report.stopped, exit_code = "interrupted", 130
    except _Terminated:  # SIGTERM between seeds (during one, the loop saves and stops: 143)
        report.stopped, exit_code = "terminated", 143
    except MnistlabError as exc:  # e.g. one seed diverged: report the others, then the error
        report.stopped, failure = f"seed {seed} failed", exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if report.stopped is not None:
        done = len(report.runs)
        print(
            f"mnistlab: stopped ({report.stopped}); {done} of {len(seeds)} seed(s) finished, "
            "reported below",
            file=sys.stderr,
        )
    _write_summary(parent, report)
    if not args.quiet or report.stopped is not None:
        print(report.table())
    if args.json:
        print(json.dumps(report.as_dict()))
    if failure is not None:
        raise failure
    return exit_code


class _Terminated(Exception):
    """SIGTERM outside a seed's training (which handles it itself)."""


def _terminate_as_exception() -> Any:
    """Make SIGTERM raise ``_Terminated`` here (the main thread only); the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def raise_terminated(signum: int, frame: object) -> None:
        raise _Terminated

    return signal.signal(signal.SIGTERM, raise_terminated)


def _write_summary(parent: Path, report: SeedReport) -> None:
    """``PARENT/seeds.json``: the same object ``--json`` prints, for scripts and the README."""
    from mnistlab.atomic import atomic_write

    if not parent.is_dir():
        return
    payload = report.as_dict() | {"written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(parent / "seeds.json", text.encode(), what="seed summary", error=ConfigError)
