"""What each of seed-mlp's three tricks buys: an ablation over seeds, on full MNIST.

The classic MLP program adds three things to plain SGD: a moving average of the weights (EMA),
L2 regularization of the weight matrices, and an exponentially decaying learning rate. The notes
say each one helps; this script measures it. It trains seed-mlp with all three on, then with each
one switched off in turn, then with none of them, every variant over the same seeds, and writes

- ``OUT/ablation.json``: every seed's figures, the statistics, the commands, the machine;
- ``OUT/ablation.md``: a markdown table (test accuracy mean ± sd over the seeds; what switching
  a trick off costs, seed by seed against all on; min – max; each seed).

Each variant is one ``mnistlab train --seeds`` command (the public command line, nothing
internal); the file is rewritten after every variant, so an interrupted ablation keeps what it
finished, and running the same command again skips the variants already done with the same
settings (``--fresh`` redoes them). The full ablation (5 variants x 5 seeds x 30,000 steps, one
thread a run) took about two hours on a busy 2-core AMD EPYC; ``--steps 300 --seeds 1-2`` tries it
in a minute or two.

    python scripts/ablation.py --data-dir ../shared/data/mnist            # the full table
    python scripts/ablation.py --steps 300 --seeds 1-2 --out OUT         # a quick try
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from mnistlab.apps.environment import cpu_name

ROOT = Path(__file__).resolve().parents[1]

# name -> (what it is, the settings that make it). "all on" is the preset as it is.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "all-on": ("all three tricks (seed-mlp as it is)", []),
    "no-ema": ("no moving average (optim.ema_decay=0)", ["optim.ema_decay=0"]),
    "no-l2": ("no L2 regularization (optim.l2=0)", ["optim.l2=0"]),
    "no-decay": ("no learning-rate decay (optim.lr_decay=1.0)", ["optim.lr_decay=1.0"]),
    "none": (
        "none of the three (plain SGD at 0.1)",
        ["optim.ema_decay=0", "optim.l2=0", "optim.lr_decay=1.0"],
    ),
}
DEFAULT_VARIANTS = "all-on,no-ema,no-l2,no-decay,none"


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def command(args: argparse.Namespace, name: str, parent: Path) -> list[str]:
    """The ``mnistlab train --seeds`` command line of one variant."""
    cmd = ["mnistlab", "train", "--preset", "seed-mlp", "--seeds", args.seeds]
    if args.data_dir:
        cmd += ["--data-dir", str(args.data_dir)]
    if args.dataset:
        cmd += ["--dataset", args.dataset]
    settings = list(VARIANTS[name][1])
    if args.steps is not None:
        settings.append(f"train.steps={args.steps}")
    if args.threads is not None:
        settings.append(f"train.threads={args.threads}")
    for s in settings:
        cmd += ["--set", s]
    cmd += ["--run-dir", str(parent / name), "--overwrite", "--quiet", "--json"]
    cmd += ["--no-tensorboard", "--checkpoint-every", "0"]
    return cmd


def run_variant(cmd: list[str]) -> dict[str, Any]:
    """Run one ``--seeds`` command; its last stdout line is the JSON report."""
    argv = [sys.executable, "-m", "mnistlab", *cmd[1:]]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"ablation: `{shlex.join(cmd)}` failed (exit {proc.returncode})")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    accs = [r["test_accuracy"] for r in report["runs"]]
    return {
        "seeds": [r["seed"] for r in report["runs"]],
        "test_accuracy": accs,
        "validation_accuracy": [r.get("validation_accuracy") for r in report["runs"]],
        "train_seconds": [r.get("train_seconds") for r in report["runs"]],
        "dataset": report.get("dataset"),
        "mean": statistics.fmean(accs),
        "sd": statistics.stdev(accs) if len(accs) > 1 else None,
        "min": min(accs),
        "max": max(accs),
    }


def paired(base: dict[str, Any], other: dict[str, Any]) -> list[float]:
    """Seed by seed, all-on's accuracy minus ``other``'s: one seed fixes the initial weights and
    the batch order, so the pair differs only in the trick switched off."""
    mine = dict(zip(base["seeds"], base["test_accuracy"], strict=True))
    return [
        mine[s] - a
        for s, a in zip(other["seeds"], other["test_accuracy"], strict=True)
        if s in mine
    ]


def table(results: dict[str, Any]) -> str:
    """The markdown table: accuracies in percent, what the trick buys in points (all on minus
    this variant, seed by seed: mean ± sd, and in how many seeds all on was better)."""
    variants = results["variants"]
    base = variants.get("all-on")
    lines = [
        "| variant | test accuracy, mean ± sd | all on − this, seed by seed | "
        "seeds where all on is better | min – max | per seed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in variants.items():
        sd = f" ± {100 * v['sd']:.2f}" if v["sd"] is not None else ""
        buys, better = "—", "—"
        if base is not None and name != "all-on":
            diffs = paired(base, v)
            if diffs:
                spread = f" ± {100 * statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
                buys = f"{100 * statistics.fmean(diffs):+.2f}{spread} pp"
                better = f"{sum(d > 0 for d in diffs)} of {len(diffs)}"
        each = ", ".join(f"{100 * a:.2f}" for a in v["test_accuracy"])
        lines.append(
            f"| {v['label']} | {100 * v['mean']:.2f}%{sd} | {buys} | {better} | "
            f"{100 * v['min']:.2f} – {100 * v['max']:.2f}% | {each} |"
        )
    first = next(iter(variants.values()), None)
    n = len(first["seeds"]) if first else 0
    lines.append("")
    lines.append(
        f"seed-mlp on {results.get('dataset', '?')}, {results['steps_label']}, seeds "
        f"{results['seeds']} ({n} each), test accuracy with the moving average's weights where "
        f"it is on; {results['machine']['cpu']}, torch {results['machine']['torch']}, "
        f"{results['threads']} thread(s) per run. Command: `{results['command']}`"
    )
    return "\n".join(lines) + "\n"


def write(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path, text in (
        (out / "ablation.json", json.dumps(results, indent=1) + "\n"),
        (out / "ablation.md", table(results)),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)  # never a half-written table under the final name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="folder of full MNIST's four IDX files")
    p.add_argument("--dataset", help="dataset name (default: mnist, as mnistlab train)")
    p.add_argument("--seeds", default="1-5", help="seeds for every variant (default 1-5)")
    p.add_argument("--steps", type=int, help="training steps (default: the preset's 30,000)")
    p.add_argument("--threads", type=int, default=1, help="train.threads (default 1)")
    p.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"comma list of {', '.join(VARIANTS)} (default {DEFAULT_VARIANTS})",
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "lessons", help="output folder")
    p.add_argument("--runs", type=Path, help="parent of the run folders (default: a temp folder)")
    p.add_argument("--fresh", action="store_true", help="redo variants already in the output")
    p.add_argument(
        "--table", action="store_true", help="only rewrite OUT/ablation.md from OUT/ablation.json"
    )
    args = p.parse_args(argv)
    if args.table:
        stored = args.out / "ablation.json"
        if not stored.is_file():
            p.error(f"--table: {stored} does not exist (run the ablation first)")
        write(args.out, json.loads(stored.read_text()))
        print(table(json.loads(stored.read_text())), end="")
        return 0

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        p.error(
            f"unknown variant {unknown[0] if unknown else '(none)'}; choose from {list(VARIANTS)}"
        )
    if args.data_dir is not None and not args.data_dir.is_dir():
        p.error(f"--data-dir {args.data_dir} is not a folder")

    given = list(sys.argv[1:] if argv is None else argv)
    if "--runs" in given:  # where the run folders went (a path of this machine) says nothing of
        at = given.index("--runs")  # the figures, so the recorded command leaves it out
        del given[at : at + 2]
    this = ["python", "scripts/ablation.py", *given]
    results: dict[str, Any] = {
        "what": "seed-mlp ablation: each trick off in turn against all on",
        "command": shlex.join(this),
        "seeds": args.seeds,
        "steps": args.steps,
        "steps_label": f"{args.steps:,} steps" if args.steps else "30,000 steps (the preset)",
        "threads": args.threads,
        "machine": machine(),
        "variants": {},
        "commands": {},
    }
    previous = args.out / "ablation.json"
    if previous.exists() and not args.fresh:
        old = json.loads(previous.read_text())
        same = all(old.get(k) == results[k] for k in ("seeds", "steps", "threads"))
        if same:
            results["variants"] = {k: v for k, v in old["variants"].items() if k in names}
            results["commands"] = {k: v for k, v in old["commands"].items() if k in names}
            results["dataset"] = old.get("dataset")

    with tempfile.TemporaryDirectory(prefix="ablation-") as tmp:
        parent = args.runs or Path(tmp)
        for name in names:
            if name in results["variants"]:
                print(f"ablation: {name} already measured, kept (--fresh redoes it)", flush=True)
                continue
            cmd = command(args, name, parent)
            print(f"ablation: {name}: {shlex.join(cmd)}", flush=True)
            started = datetime.datetime.now(datetime.timezone.utc)
            summary = summarise(run_variant(cmd))
            finished = datetime.datetime.now(datetime.timezone.utc)
            summary["label"] = VARIANTS[name][0]
            summary["started"] = started.isoformat(timespec="seconds")
            summary["finished"] = finished.isoformat(timespec="seconds")
            results["dataset"] = summary["dataset"]
            # recorded with the run folders' parent as RUNS: a path of this machine says nothing
            results["commands"][name] = shlex.join(cmd).replace(str(parent), "RUNS")
            results["variants"][name] = summary
            # Keep the variants in the order asked for, whatever was finished first.
            results["variants"] = {
                n: results["variants"][n] for n in names if n in results["variants"]
            }
            write(args.out, results)
            sd = f" ± {100 * summary['sd']:.2f}" if summary["sd"] is not None else ""
            print(f"ablation: {name}: {100 * summary['mean']:.2f}%{sd}", flush=True)
    print(table(results), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
