"""Step-by-step parity of mnistlab with the TensorFlow compat.v1 port (``ports/tf_v1.py``).

mnistlab trains the preset (``train.log_every=1``, so every step is a boundary the callbacks
see) and hands over its own initial weights and batch order, read from the run at its start;
the TF graph program then starts from those weights and is fed those batches. Compared step by
step: the cross-entropy and the whole loss (cross-entropy + L2, both on the weights before the
step's update), the learning rate, and the moving-average weights (the weights themselves for
softmax, which has no average) every ``--snapshot-every`` steps; then the final test accuracy.
Prints the largest difference of each and the step where it occurred.

    python benchmarks/frameworks.py --parity --parity-steps 1000
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-5


def _mnistlab_side(preset: str, args: argparse.Namespace, snapshot_steps: list[int]) -> dict:
    import torch

    from mnistlab.config import resolve
    from mnistlab.data import load_splits
    from mnistlab.io.callbacks import Callback
    from mnistlab.training import l2_penalty, train

    steps = args.parity_steps
    config = resolve(
        preset,
        None,
        [
            f"train.steps={steps}",
            f"train.seed={args.seed}",
            "train.log_every=1",
            f"train.route={args.parity_route}",
            "train.device=cpu",
            f"train.threads={args.threads}",
            "tracking.tensorboard=false",
            "tracking.jsonl=false",
        ],
    )
    data = load_splits(args.dataset, args.data_dir)

    def host(params: list[torch.Tensor]) -> list[np.ndarray]:  # TF layout: W is [in, out]
        return [p.detach().cpu().numpy().T.copy() for p in params]

    class Record(Callback):
        def __init__(self) -> None:
            self.ce: list[float] = []
            self.penalty: list[float] = []
            self.lr: list[float] = []
            self.snapshots: dict[int, list[np.ndarray]] = {}

        def on_start(self, run: Any) -> None:
            self.init = host(run.parameters())
            self.first_penalty = float(
                l2_penalty([p for p in run.parameters() if p.ndim >= 2], config.optim.l2)
            )
            batcher = copy.deepcopy(run.batcher)  # the order the run is about to use
            self.order = np.stack([batcher.next_indices().numpy() for _ in range(steps)])

        def on_log(self, run: Any, record: Any) -> None:
            self.ce.append(record.data_loss)
            self.penalty.append(record.loss - record.data_loss)
            self.lr.append(record.lr)
            if record.step in snapshot_steps:
                held = run.ema.shadows if run.ema is not None else run.parameters()
                self.snapshots[record.step] = host(held)

    rec = Record()
    result = train(config, data, callbacks=[rec])
    # The first op of step 1, as the fused engine computes it (addmm), and in float64.
    x = data.train.images.index_select(0, torch.from_numpy(rec.order[0]))
    w, b = (torch.from_numpy(a) for a in rec.init[:2])
    first = torch.addmm(b, x, w).numpy()
    exact = x.double().numpy() @ rec.init[0].astype(np.float64) + rec.init[1].astype(np.float64)
    ce = np.array(rec.ce)
    # The loss of step k is computed on the weights before its update: those after step k-1.
    before = np.array([rec.first_penalty, *rec.penalty[:-1]])
    return {
        "init": rec.init,
        "order": rec.order,
        "cross_entropy": ce,
        "loss": ce + before,
        "lr": np.array(rec.lr),
        "snapshots": rec.snapshots,
        "test": result.test.accuracy if result.test else float("nan"),
        "validation_size": len(data.validation),
        "engine": result.engine,
        "first_layer": first,
        "first_layer_exact": exact,
    }


def _tf_side(
    program: str,
    ours: dict,
    args: argparse.Namespace,
    snapshot_steps: list[int],
    env_extra: dict[str, str] | None = None,
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        given, got = Path(tmp) / "given.npz", Path(tmp) / "got.npz"
        arrays = {f"init{i}": a for i, a in enumerate(ours["init"])}
        np.savez(given, order=ours["order"], snapshot_steps=np.array(snapshot_steps), **arrays)
        cmd = [sys.executable, str(HERE / "parity.py"), "--tf-child", program, str(given), str(got)]
        cmd += [args.dataset, args.data_dir or "", str(ours["validation_size"]), str(args.threads)]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env_extra or {})}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        if done.returncode != 0:
            raise SystemExit(f"the TensorFlow side failed:\n{done.stderr[-2000:]}")
        with np.load(got) as z:
            out = {k: z[k] for k in ("cross_entropy", "loss", "lr", "test", "first_layer")}
            out["snapshots"] = {
                int(s): [z[f"snap{s}_{i}"] for i in range(len(ours["init"]))]
                for s in snapshot_steps
            }
    return out


def _tf_child(argv: list[str]) -> int:
    """In its own process (TensorFlow and torch never share one): run the TF side."""
    program, given, got, dataset, data_dir, validation, threads = argv
    sys.path.insert(0, str(HERE))
    from catalog import data_folder
    from ports import tf_v1
    from ports.common import PROGRAMS, load

    folder, _ = data_folder(dataset, data_dir or None)
    data = load(folder, int(validation))
    with np.load(given) as z:
        init = [z[f"init{i}"] for i in range(len([k for k in z.files if k.startswith("init")]))]
        order, snaps = z["order"], [int(s) for s in z["snapshot_steps"]]
    out = tf_v1.parity(PROGRAMS[program], data, init, order, snaps, int(threads))
    arrays = {f"snap{s}_{i}": a for s, held in out["snapshots"].items() for i, a in enumerate(held)}
    np.savez(got, cross_entropy=out["cross_entropy"], loss=out["loss"], lr=out["lr"],
             test=np.array(out["test"]), first_layer=out["first_layer"], **arrays)  # fmt: skip
    return 0


def _worst(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, int]:
    """The largest relative difference and the (1-based) step where it occurred."""
    rel = np.abs(theirs - ours) / np.maximum(np.abs(ours), 1e-30)
    k = int(np.argmax(rel))
    return float(rel[k]), k + 1


GROWTH_STEPS = (1, 10, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)


def _differences(ours: dict, theirs: dict, snapshot_steps: list[int]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for key in ("cross_entropy", "loss", "lr"):
        worst, step = _worst(ours[key], theirs[key])
        report[key] = {"max_rel_diff": worst, "step": step}
    rel = np.abs(theirs["loss"] - ours["loss"]) / np.abs(ours["loss"])
    over = np.nonzero(rel > TOLERANCE)[0]
    report["loss"]["first_step_over_tolerance"] = int(over[0]) + 1 if len(over) else None
    report["loss"]["growth"] = {s: float(rel[:s].max()) for s in GROWTH_STEPS if s <= len(rel)}
    weights_worst, weights_step, weights_scale = 0.0, 0, 0.0
    for s in snapshot_steps:
        for a, b in zip(ours["snapshots"][s], theirs["snapshots"][s], strict=True):
            d = float(np.max(np.abs(a - b)))
            if d > weights_worst:
                weights_worst, weights_step, weights_scale = d, s, float(np.max(np.abs(a)))
    report["weights"] = {"max_abs_diff": weights_worst, "step": weights_step}
    report["weights"]["max_abs_value"] = weights_scale
    return report


def compare_program(program: str, args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from ports.common import PROGRAMS

    preset = PROGRAMS[program].preset
    steps = args.parity_steps
    every = max(1, args.snapshot_every)
    snapshot_steps = sorted({1, 2, 3, *range(every, steps + 1, every), steps})
    ours = _mnistlab_side(preset, args, snapshot_steps)
    theirs = _tf_side(program, ours, args, snapshot_steps)
    report: dict[str, Any] = {"program": program, "preset": preset, "steps": steps}
    report |= _differences(ours, theirs, snapshot_steps)
    report["weights"]["what"] = "moving averages" if PROGRAMS[program].ema else "weights"
    report["weights"]["snapshot_every"] = every
    exact = ours["first_layer_exact"]
    report["first_op"] = {
        "op": "x . W1 + b1 of step 1 (torch addmm vs tf.matmul + add), float32",
        "max_abs_diff_mnistlab_tf": float(
            np.max(np.abs(ours["first_layer"] - theirs["first_layer"]))
        ),
        "max_abs_err_mnistlab": float(np.max(np.abs(ours["first_layer"] - exact))),
        "max_abs_err_tf": float(np.max(np.abs(theirs["first_layer"] - exact))),
        "max_abs_value": float(np.max(np.abs(exact))),
    }
    if args.parity_self_check:  # TensorFlow against itself: oneDNN's matmul off
        again = _tf_side(program, ours, args, snapshot_steps, {"TF_ENABLE_ONEDNN_OPTS": "0"})
        self_check = _differences(theirs, again, snapshot_steps)
        report["tf_onednn_on_vs_off"] = {
            "loss": self_check["loss"],
            "weights": self_check["weights"],
            "test_accuracy_onednn_off": float(again["test"]),
        }
    report["test_accuracy"] = {"mnistlab": ours["test"], "tf-v1": float(theirs["test"])}
    report["engine"] = ours["engine"]
    report["pass"] = report["loss"]["max_rel_diff"] <= TOLERANCE
    return report


def describe(r: dict[str, Any]) -> str:
    w, t = r["weights"], r["test_accuracy"]
    lines = [f"{r['preset']}, {r['steps']:,} steps (mnistlab engine {r['engine']}):"]
    for key, name in (
        ("loss", "loss"),
        ("cross_entropy", "cross-entropy"),
        ("lr", "learning rate"),
    ):
        lines.append(
            f"  {name:<14} largest relative difference {r[key]['max_rel_diff']:.3g} "
            f"at step {r[key]['step']:,}"
        )
    lines.append(
        f"  {w['what']:<14} largest absolute difference {w['max_abs_diff']:.3g} at step "
        f"{w['step']:,} (largest value {w['max_abs_value']:.3g}; compared every "
        f"{w['snapshot_every']} steps)"
    )
    lines.append(
        f"  test accuracy  mnistlab {100 * t['mnistlab']:.2f}%, tf-v1 {100 * t['tf-v1']:.2f}%"
    )
    op = r["first_op"]
    lines.append(
        f"  first op       {op['op']}: mnistlab and tf differ by up to "
        f"{op['max_abs_diff_mnistlab_tf']:.3g} (values up to {op['max_abs_value']:.3g}); "
        f"errors against float64: mnistlab {op['max_abs_err_mnistlab']:.3g}, "
        f"tf {op['max_abs_err_tf']:.3g}"
    )
    growth = ", ".join(f"{s}: {v:.1e}" for s, v in r["loss"]["growth"].items())
    lines.append(f"  loss difference, largest up to step: {growth}")
    if "tf_onednn_on_vs_off" in r:
        c = r["tf_onednn_on_vs_off"]
        grow = ", ".join(f"{s}: {v:.1e}" for s, v in c["loss"]["growth"].items())
        lines.append(
            f"  tf vs tf (oneDNN off) loss largest relative difference "
            f"{c['loss']['max_rel_diff']:.3g} at step {c['loss']['step']:,}; up to step: {grow}"
        )
    verdict = "within" if r["pass"] else "NOT within"
    first = r["loss"]["first_step_over_tolerance"]
    where = f" (first step over it: {first:,})" if first else ""
    lines.append(f"  loss {verdict} {TOLERANCE:g} relative over {r['steps']:,} steps{where}")
    return "\n".join(lines)


def run_parity(args: argparse.Namespace) -> int:
    from catalog import machine, missing

    why = missing("tf-v1")
    if why:
        print(f"parity needs TensorFlow: {why}")
        return 1
    print(f"machine: {machine()}\ndata: {args.dataset}; seed {args.seed}", flush=True)
    reports = []
    for program in args.programs.split(","):
        report = compare_program(program, args)
        reports.append(report)
        print(describe(report), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parity.json").write_text(json.dumps(reports, indent=2) + "\n")
    print(f"wrote {out / 'parity.json'}")
    return 0 if all(r["pass"] for r in reports) else 1


if __name__ == "__main__" and sys.argv[1:2] == ["--tf-child"]:
    raise SystemExit(_tf_child(sys.argv[2:]))
