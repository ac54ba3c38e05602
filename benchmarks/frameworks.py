"""The framework comparison, measured: the seed's two programs in every installed framework.

Softmax regression (``seed-softmax``) and the 784-500-10 MLP with L2, exponential decay and a
moving average (``seed-mlp``), each run by

- ``mnistlab``: its own path, as ``mnistlab train`` runs it (``ports/mnistlab_entry.py``);
- ``pytorch``: plain PyTorch as tutorials write it (``ports/torch_plain.py``);
- ``tf-v1``: TensorFlow 2 running the original graph program via ``tf.compat.v1``
  (``ports/tf_v1.py``);
- ``keras``: the Keras ``model.fit`` version (``ports/keras_fit.py``);
- ``jax``: JAX + optax with a ``jit``-compiled step (``ports/jax_optax.py``);

on the same IDX files, batch size, step count, initial-weight distributions, learning-rate
schedule and evaluation (validation with the averaged weights every ``eval_every`` steps, test
accuracy once at the end). Each run is its own process, so frameworks never share threads or
memory. Training time runs from the first step to the end of the last, validation included;
loading data and building the model are not counted. Each port's docstring says where its
framework forces a difference.

    python benchmarks/frameworks.py                       # full MNIST, 1,000 / 30,000 steps
    python benchmarks/frameworks.py --steps 200 --frameworks mnistlab,pytorch
    python benchmarks/frameworks.py --parity              # TF compat.v1 vs mnistlab, step by step
    python benchmarks/frameworks.py --device cuda         # the GPU column (torch-based ports)

Prints a table and writes ``--out``/frameworks.json and frameworks.png. A framework that is not
installed is skipped with the line that installs it (``pip install 'mnistlab[compare]'``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cpu_name, default_data  # noqa: E402
from ports.common import PROGRAMS, load  # noqa: E402

FRAMEWORKS = ("mnistlab", "pytorch", "tf-v1", "keras", "jax")
NEEDS = {
    "mnistlab": ("mnistlab", "torch"),
    "pytorch": ("torch",),
    "tf-v1": ("tensorflow",),
    "keras": ("tensorflow", "keras"),
    "jax": ("jax", "optax"),
}
INSTALL = {
    "tensorflow": "pip install 'mnistlab[compare]' (or: pip install tensorflow-cpu)",
    "keras": "pip install 'mnistlab[compare]' (or: pip install tensorflow-cpu)",
    "jax": "pip install 'mnistlab[compare]' (or: pip install 'jax[cpu]' optax)",
    "optax": "pip install 'mnistlab[compare]' (or: pip install optax)",
    "torch": "pip install torch",
    "mnistlab": "pip install -e . (from the checkout)",
}
ON_DEVICE = ("mnistlab", "pytorch")
"""The ports that also run on a GPU (``--device cuda``); the others measure the CPU."""
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "PYTHONWARNINGS": "ignore"}


def missing(framework: str) -> str | None:
    """Why ``framework`` cannot run here (the module missing and how to install it), or None."""
    for module in NEEDS[framework]:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: {INSTALL[module]}"
    return None


def data_folder(dataset: str, data_dir: str | None) -> tuple[str, int]:
    """The folder of the four IDX files and the validation size mnistlab uses for ``dataset``."""
    from mnistlab.data.registry import get_dataset

    spec = get_dataset(dataset)
    if data_dir:
        return data_dir, spec.validation_size
    if dataset == "mnist-sample":
        import mnistlab.data

        return str(Path(mnistlab.data.__file__).parent / "sample"), spec.validation_size
    raise SystemExit(f"--data-dir is needed for {dataset}")


# -- one framework's runs, in a child process --------------------------------------------------
def run_one(framework: str, program_name: str, args: argparse.Namespace) -> dict[str, Any]:
    program = PROGRAMS[program_name]
    steps = args.steps or (args.mlp_steps if program_name == "mlp" else 0) or program.steps
    if framework == "mnistlab":
        from ports import mnistlab_entry

        return mnistlab_entry.run(
            program, args.dataset, args.data_dir, steps, args.seed, args.threads, args.device
        )
    folder, validation = data_folder(args.dataset, args.data_dir)
    data = load(folder, validation)
    if framework == "pytorch":
        from ports import torch_plain

        return torch_plain.run(program, data, steps, args.seed, args.threads, args.device)
    if framework == "tf-v1":
        from ports import tf_v1 as port  # type: ignore[no-redef]
    elif framework == "keras":
        from ports import keras_fit as port  # type: ignore[no-redef]
    else:
        from ports import jax_optax as port  # type: ignore[no-redef]
    return port.run(program, data, steps, args.seed, args.threads)


def spawn(framework: str, programs: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run ``programs`` in ``framework`` in one child process (one import of the framework);
    each finished program comes back as one JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run", framework]
    cmd += ["--programs", ",".join(programs), "--dataset", args.dataset]
    cmd += ["--seed", str(args.seed), "--threads", str(args.threads), "--device", args.device]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--steps", str(args.steps)] if args.steps else []
    cmd += ["--mlp-steps", str(args.mlp_steps)] if args.mlp_steps else []
    env = {**os.environ, **CHILD_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:]) or "no output"
        finished = {r["program"] for r in rows}
        rows += [
            {"framework": framework, "program": p, "error": tail}
            for p in programs
            if p not in finished
        ]
    return rows


# -- the report -----------------------------------------------------------------------------------
def machine() -> str:
    """The machine without torch's settings: every framework here picks its own threads."""
    cpu = cpu_name()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, Python {platform.python_version()}, {platform.platform()}"


def table(rows: list[dict[str, Any]]) -> str:
    base = {
        r["program"]: r["train_seconds"]
        for r in rows
        if r.get("framework") == "mnistlab" and "error" not in r
    }
    head = (
        f"{'program':<8} {'framework':<10} {'version':<44} {'device':<6} {'threads':<8} "
        f"{'train s':>9} {'samples/s':>10} {'test acc':>9} {'x mnistlab':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['program']:<8} {r['framework']:<10} failed: {r['error']}")
            continue
        rel = r["train_seconds"] / base[r["program"]] if r["program"] in base else None
        threads = r["threads"].split(" ")[0] if r["threads"].startswith("XLA") else r["threads"]
        lines.append(
            f"{r['program']:<8} {r['framework']:<10} {r['version'][:44]:<44} {r['device']:<6} "
            f"{threads:<8} {r['train_seconds']:>9.2f} {r['samples_per_second']:>10,.0f} "
            f"{100 * r['test_accuracy']:>8.2f}% {'' if rel is None else f'{rel:.2f}x':>10}"
        )
    return "\n".join(lines)


def bar_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    programs = [p for p in PROGRAMS if any(r["program"] == p and "error" not in r for r in rows)]
    fig, axes = plt.subplots(1, len(programs), figsize=(6 * len(programs), 3.2), squeeze=False)
    for ax, program in zip(axes[0], programs, strict=True):
        ok = [r for r in rows if r["program"] == program and "error" not in r]
        names = [r["framework"] for r in ok]
        secs = [r["train_seconds"] for r in ok]
        bars = ax.barh(names, secs, color="#4c72b0")
        for bar, r in zip(bars, ok, strict=True):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {r['train_seconds']:.1f} s, {100 * r['test_accuracy']:.2f}%",
                va="center",
                fontsize=8,
            )
        ax.invert_yaxis()
        ax.set_xlabel("training time (s), lower is better")
        ax.set_title(f"{PROGRAMS[program].preset}, {ok[0]['steps']:,} steps")
        ax.set_xlim(0, max(secs) * 1.6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(args: argparse.Namespace) -> int:
    frameworks = args.frameworks.split(",")
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        raise SystemExit(f"unknown framework {unknown[0]}: choose from {', '.join(FRAMEWORKS)}")
    programs = args.programs.split(",")
    if any(p not in PROGRAMS for p in programs):
        raise SystemExit(f"--programs takes {', '.join(PROGRAMS)}; got {args.programs}")
    if args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
    where = f"{args.dataset}" + (f" from {args.data_dir}" if args.data_dir else "")
    print(f"machine: {machine()}\ndata: {where}; seed {args.seed}", flush=True)
    rows, skipped = [], {}
    for framework in frameworks:
        why = missing(framework)
        if not why and args.device != "cpu" and framework not in ON_DEVICE:
            why = f"its port runs on the CPU only (--device {args.device} runs {', '.join(ON_DEVICE)})"
        if why:
            skipped[framework] = why
            print(f"skipped {framework}: {why}", flush=True)
            continue
        for row in spawn(framework, programs, args):
            rows.append(row)
            status = row.get("error") or (
                f"{row['train_seconds']:.2f} s, test {100 * row['test_accuracy']:.2f}%"
            )
            print(f"  {framework} {row['program']}: {status}", flush=True)
    print(table(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": machine(), "dataset": where, "seed": args.seed, "command": sys.argv}
    report |= {"rows": rows, "skipped": skipped}
    (out / "frameworks.json").write_text(json.dumps(report, indent=2) + "\n")
    written = [out / "frameworks.json"]
    if any("error" not in r for r in rows):
        short = machine().split(", Python")[0]
        bar_chart(rows, out / "frameworks.png", f"{Path(where.split(' ')[0]).name}; {short}")
        written.append(out / "frameworks.png")
    print("wrote " + " and ".join(map(str, written)))
    return 1 if any("error" in r for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    dataset, data_dir = default_data()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset")
    p.add_argument("--programs", default="softmax,mlp", help="softmax, mlp or both")
    p.add_argument("--steps", type=int, default=0, help="steps of each program (default: its own)")
    p.add_argument(
        "--mlp-steps", type=int, default=0, help="steps of the MLP alone (default: 30,000)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dataset", default=dataset, help=f"default: {dataset}")
    p.add_argument("--data-dir", default=data_dir, help=f"default: {data_dir}")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: each one's default)")
    p.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="cuda: mnistlab and pytorch only"
    )
    p.add_argument("--out", default="benchmarks/out", help="folder for the JSON and the PNG")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument("--parity", action="store_true", help="TF compat.v1 vs mnistlab, step by step")
    p.add_argument("--parity-steps", type=int, default=1000)
    p.add_argument(
        "--parity-self-check",
        action="store_true",
        help="parity: also run TensorFlow against itself with oneDNN off",
    )
    p.add_argument("--snapshot-every", type=int, default=50, help="parity: compare weights every N")
    p.add_argument("--run", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dataset == "mnist-sample":
        args.data_dir = None
    if args.run:
        for program in args.programs.split(","):
            print(json.dumps(run_one(args.run, program, args)), flush=True)
        return 0
    if args.parity:
        from parity import run_parity

        return run_parity(args)
    return compare(args)


if __name__ == "__main__":
    raise SystemExit(main())
