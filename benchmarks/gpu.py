"""The GPU figures in one prepared run (under 5 minutes on one H100): seed-mlp's 30,000 steps
through each engine, the whole ``mnistlab train`` command on a cold and a warm compile cache, and
lenet's step, and the speedrun preset over five seeds (time from data loaded to the final
evaluation, as docs/speedrun.md counts it). Prints every figure with the card's name; ``--json
FILE`` keeps them. ``--quick`` leaves out the slow engines and times the whole command once.

    python benchmarks/gpu.py --data-dir DIR [--json gpu.json] [--quick]

Engines (``training/steps.py`` picks one): ``autograd`` (every mode), ``fused`` (hand-written
gradient, eager), ``graphs`` (the default on CUDA: the fused step from device tables on flat
parameter, gradient and shadow buffers, captured as CUDA graphs), ``compiled+graphs`` (the same,
passed through ``torch.compile`` first; opt-in with ``train.compile=on``). LeNet and the
speedrun's cnn run the captured autograd step (``autograd+tables+cuda-graphs``), the default on
CUDA for them; the uncaptured autograd engine and TF32 are timed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import default_data, machine  # noqa: E402
from mnistlab.config import resolve  # noqa: E402
from mnistlab.data import load_splits  # noqa: E402
from mnistlab.training import train  # noqa: E402

ENGINES = {
    "compiled+graphs": ["train.compile=on", "train.cuda_graphs=auto"],
    "graphs": ["train.compile=off", "train.cuda_graphs=auto"],
    "fused": ["train.compile=off", "train.cuda_graphs=off"],
    "autograd": ["train.fused=false"],
}

# LeNet (momentum, dropout) through the captured autograd step (the default on CUDA), uncaptured
# (the autograd engine), and captured with TF32 products and convolutions.
LENET = {
    "captured (default)": [],
    "uncaptured (train.cuda_graphs=off)": ["train.cuda_graphs=off"],
    "captured, train.tf32=true": ["train.tf32=true"],
}


def in_process(data: Any, preset: str, steps: int, device: str, extra: list[str]) -> dict[str, Any]:
    config = resolve(
        preset,
        None,
        [
            f"train.steps={steps}",
            f"train.device={device}",
            "tracking.tensorboard=false",
            "tracking.jsonl=false",
            "checkpoint.every=0",
            *extra,
        ],
    )
    result = train(config, data)
    return {
        "preset": preset,
        "steps": steps,
        "engine": result.engine,
        "train_seconds": round(result.train_seconds, 3),
        "wall_seconds": round(result.wall_seconds, 3),
        "test_accuracy": result.test.accuracy if result.test else None,
    }


def speedrun_seeds(data: Any, device: str, seeds: int) -> dict[str, Any]:
    """The speedrun preset as it stands, seeds 1..N one after another in this process (the first
    also pays for cuDNN's warm-up: it is reported, not dropped)."""
    runs = [
        in_process(data, "speedrun", 1289, device, [f"train.seed={s}"]) for s in range(1, seeds + 1)
    ]
    accuracy = [r["test_accuracy"] for r in runs]
    wall = [r["wall_seconds"] for r in runs]
    return {
        "seeds": seeds,
        "test_accuracy": accuracy,
        "wall_seconds": wall,
        "mean_test_accuracy": round(statistics.mean(accuracy), 5),
        "sd_test_accuracy": round(statistics.stdev(accuracy), 5) if seeds > 1 else None,
        "mean_wall_seconds": round(statistics.mean(wall), 3),
    }


def whole_command(data_dir: str | None, device: str, cache: Path, steps: int) -> dict[str, Any]:
    """``mnistlab train --preset seed-mlp`` as a user runs it (TensorBoard, checkpoints on)."""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, "-m", "mnistlab", "train", "--preset", "seed-mlp", "--json"]
        cmd += ["--quiet", "--device", device, "--run-dir", str(Path(run_dir) / "r")]
        cmd += ["--set", f"train.steps={steps}"]
        if data_dir:
            cmd += ["--data-dir", data_dir, "--dataset", "mnist"]
        began = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        wall = time.perf_counter() - began
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-3:], "wall_seconds": round(wall, 2)}
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "wall_seconds": round(wall, 2),
        "train_seconds": summary.get("train_seconds"),
        "test_accuracy": summary.get("test_accuracy"),
        "engine": summary.get("engine"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--short-steps", type=int, default=5_000, help="for the slow engines")
    parser.add_argument("--lenet-steps", type=int, default=2_000)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the whole command once, the default engine's loop and lenet's (no slow engines)",
    )
    args = parser.parse_args()
    dataset, data_dir = default_data()
    if args.data_dir:  # a folder of the four files is full MNIST unless --dataset says otherwise
        dataset, data_dir = "mnist", args.data_dir
    dataset = args.dataset or dataset
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"machine: {machine()}", flush=True)
    figures: dict[str, Any] = {"card": card, "torch": torch.__version__, "dataset": dataset}

    def report(name: str, value: dict[str, Any]) -> None:
        figures[name] = value
        print(f"[{card}] {name}: {json.dumps(value)}", flush=True)

    with tempfile.TemporaryDirectory() as cache:
        # One compile cache for the whole script: the first command finds it empty (cold).
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        # The first command of the script also meets cold file caches (torch's libraries, the
        # data): the "cold" figure. --quick times that one only.
        for label in ("first run",) if args.quick else ("cold cache", "warm cache"):
            try:
                report(
                    f"mnistlab train --preset seed-mlp ({label})",
                    whole_command(data_dir, args.device, Path(cache), args.steps),
                )
            except Exception as exc:  # noqa: BLE001 - report and go on to the next figure
                report(f"whole command ({label})", {"error": repr(exc)})
        in_process_figures(figures, report, dataset, data_dir, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


def in_process_figures(
    figures: dict[str, Any], report: Any, dataset: str, data_dir: str | None, args: Any
) -> None:
    data = load_splits(dataset, data_dir).to(args.device)
    for engine, extra in ENGINES.items():
        if args.quick and engine != "graphs":
            continue
        steps = args.steps if "graphs" in engine else args.short_steps
        try:
            value = in_process(data, "seed-mlp", steps, args.device, extra)
            value["seconds_per_30000_steps"] = round(value["train_seconds"] * 30_000 / steps, 2)
            report(f"seed-mlp loop, {engine}", value)
        except Exception as exc:  # noqa: BLE001
            report(f"seed-mlp loop, {engine}", {"error": repr(exc)})
    try:
        value = in_process(data, "seed-mlp", args.steps, args.device, ["train.tf32=true"])
        value["seconds_per_30000_steps"] = round(value["train_seconds"] * 30_000 / args.steps, 2)
        report("seed-mlp loop, graphs, train.tf32=true", value)
    except Exception as exc:  # noqa: BLE001
        report("seed-mlp loop, graphs, train.tf32=true", {"error": repr(exc)})
    for label, extra in LENET.items():
        try:
            value = in_process(data, "lenet", args.lenet_steps, args.device, extra)
            value["seconds_per_10000_steps"] = round(
                value["train_seconds"] * 10_000 / args.lenet_steps, 2
            )
            report(f"lenet loop, {label}", value)
        except Exception as exc:  # noqa: BLE001
            report(f"lenet loop, {label}", {"error": repr(exc)})
    try:
        report("speedrun, 5 seeds", speedrun_seeds(data, args.device, 5))
    except Exception as exc:  # noqa: BLE001
        report("speedrun, 5 seeds", {"error": repr(exc)})


if __name__ == "__main__":
    main()
