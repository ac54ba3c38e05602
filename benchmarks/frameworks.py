"""The framework comparison, measured: the seed's two programs in every installed framework.

Softmax regression (``seed-softmax``) and the 784-500-10 MLP with L2, exponential decay and a
moving average (``seed-mlp``), each run by

- ``mnistlab``: its own path, as ``mnistlab train`` runs it (``ports/mnistlab_entry.py``);
- ``mnistlab-auto``: the same with ``--set train.route=auto`` (the fused dense step's fastest
  route for this CPU, ``training/routes.py``);
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

One pass on a shared machine cannot carry a ratio: speed drifts by tens of percent within
minutes. So the frameworks run in ``--rounds`` rounds, in the given order and then reversed
(A B C, C B A, A B C, ...); each framework's time is divided by mnistlab's in the same round; the
report gives the median and the range of those ratios over the rounds, and calls a difference
only when the range does not cross 1 (``rounds.py``). The load average before each run, and the
CPU's model, family and vector flags, are printed and stored beside the figures.

    python benchmarks/frameworks.py --rounds 5            # full MNIST, 1,000 / 30,000 steps
    python benchmarks/frameworks.py --rounds 3 --frameworks mnistlab,jax --programs mlp
    python benchmarks/frameworks.py --rounds 5 --frameworks mnistlab,mnistlab-auto,jax --programs mlp
    python benchmarks/frameworks.py --steps 200 --frameworks mnistlab,pytorch
    python benchmarks/frameworks.py --parity              # TF compat.v1 vs mnistlab, step by step
    python benchmarks/frameworks.py --parity --parity-route auto   # the same by the fast route
    python benchmarks/frameworks.py --device cuda         # the GPU column (torch-based ports)

Prints a table and writes ``--out``/frameworks.json (every run, the summary, the machine) and
frameworks.png. A framework that is not installed is skipped with the line that installs it
(``pip install 'mnistlab[compare]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from catalog import (  # noqa: E402
    FRAMEWORKS,
    cpu,
    cpu_line,
    data_folder,
    load_average,
    machine,
    missing,
)
from common import default_data  # noqa: E402
from ports.common import PORTED, PROGRAMS, load  # noqa: E402
from rounds import bar_chart, pair_ratios, round_order, summarize, table  # noqa: E402

ON_DEVICE = ("mnistlab", "mnistlab-auto", "pytorch")
"""The ports that also run on a GPU (``--device cuda``); the others measure the CPU."""
CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "PYTHONWARNINGS": "ignore"}


# -- one framework's runs, in a child process --------------------------------------------------
def run_one(framework: str, program_name: str, args: argparse.Namespace) -> dict[str, Any]:
    program = PROGRAMS[program_name]
    own = {"mlp": args.mlp_steps, "lenet": args.lenet_steps}.get(program_name, 0)
    steps = args.steps or own or program.steps
    if framework in ("mnistlab", "mnistlab-auto"):
        from ports import mnistlab_entry

        route = "auto" if framework == "mnistlab-auto" else None
        return mnistlab_entry.run(
            program,
            args.dataset,
            args.data_dir,
            steps,
            args.seed,
            args.threads,
            args.device,
            route=route,
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
    cmd += ["--lenet-steps", str(args.lenet_steps)] if args.lenet_steps else []
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


# -- the rounds ---------------------------------------------------------------------------------
def check_choices(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    frameworks = args.frameworks.split(",")
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        raise SystemExit(f"unknown framework {unknown[0]}: choose from {', '.join(FRAMEWORKS)}")
    programs = args.programs.split(",")
    if any(p not in PROGRAMS for p in programs):
        raise SystemExit(f"--programs takes {', '.join(PROGRAMS)}; got {args.programs}")
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1; got {args.rounds}")
    if args.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
    return frameworks, programs


def write_report(
    args: argparse.Namespace,
    where: str,
    rows: list[dict[str, Any]],
    skipped: dict[str, str],
    done: int,
    *,
    quiet: bool,
) -> dict[str, dict[str, dict[str, Any]]]:
    """frameworks.json (and the PNG) for the rounds done so far; returns the summary."""
    summary = summarize(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": machine(),
        "cpu": cpu(),
        "dataset": where,
        "seed": args.seed,
        "rounds": args.rounds,
        "rounds_done": done,
        "command": sys.argv,
        "summary": summary,
        "rows": rows,
        "skipped": skipped,
    }
    (out / "frameworks.json").write_text(json.dumps(report, indent=2) + "\n")
    written = [out / "frameworks.json"]
    if summary:
        title = f"{Path(where.split(' ')[0]).name}; {cpu_line()}"
        bar_chart(summary, out / "frameworks.png", title)
        written.append(out / "frameworks.png")
    if not quiet:
        print("wrote " + " and ".join(map(str, written)))
    return summary


def compare(args: argparse.Namespace) -> int:
    frameworks, programs = check_choices(args)
    where = args.dataset  # not the folder: a path of this machine says nothing of the figures
    print(f"machine: {machine()}\ndata: {where}; seed {args.seed}; {args.rounds} round(s)")
    print(f"load average at start: {_load_text(load_average())}", flush=True)
    skipped: dict[str, str] = {}
    for framework in frameworks:
        why = missing(framework)
        if not why and args.device != "cpu" and framework not in ON_DEVICE:
            why = f"its port runs on the CPU only (--device {args.device} runs {', '.join(ON_DEVICE)})"
        if why:
            skipped[framework] = why
            print(f"skipped {framework}: {why}", flush=True)
    running = [f for f in frameworks if f not in skipped]
    for program, ported in PORTED.items():
        others = [f for f in running if f not in ported]
        if program in programs and others:
            print(f"{program}: no port for {', '.join(others)} (ported: {', '.join(ported)})")
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for r in range(args.rounds):
        order = round_order(running, r)
        print(f"round {r + 1}/{args.rounds}: {' '.join(order)}", flush=True)
        for framework in order:
            mine = [p for p in programs if framework in PORTED.get(p, FRAMEWORKS)]
            if not mine:
                continue
            before = load_average()
            for row in spawn(framework, mine, args):
                row |= {"round": r + 1, "load_before": before, "load_after": load_average()}
                row["load_1min"] = before[0] if before else None
                rows.append(row)
                status = row.get("error") or (
                    f"{row['train_seconds']:.2f} s, test {100 * row['test_accuracy']:.2f}%"
                )
                print(f"  {framework} {row['program']}: {status} "
                      f"(load {_load_text(before)})", flush=True)  # fmt: skip
        # Written after every round, so a run cut short keeps the rounds it finished.
        summary = write_report(args, where, rows, skipped, r + 1, quiet=r + 1 < args.rounds)
    print(table(summary))
    for mine in ("mnistlab", "mnistlab-auto"):
        for other in running:
            if other.startswith("mnistlab") or mine not in running:
                continue
            for program, q in pair_ratios(rows, mine, other).items():
                print(f"{program}: {mine} / {other}, per round: median {q['median']:.3f} "
                      f"(range {q['min']:.3f}-{q['max']:.3f})")  # fmt: skip
    if args.rounds == 1:
        print("one round: its ratios come from a single pass; use --rounds 3 or more to compare")
    return 1 if any("error" in r for r in rows) else 0


def _load_text(load: tuple[float, float, float] | None) -> str:
    return "unknown" if load is None else " ".join(f"{v:.2f}" for v in load)


def main(argv: list[str] | None = None) -> int:
    dataset, data_dir = default_data()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset")
    p.add_argument(
        "--programs",
        default="softmax,mlp",
        help="softmax, mlp, lenet (mnistlab and jax only), comma-separated",
    )
    p.add_argument("--steps", type=int, default=0, help="steps of each program (default: its own)")
    p.add_argument(
        "--mlp-steps", type=int, default=0, help="steps of the MLP alone (default: 30,000)"
    )
    p.add_argument(
        "--lenet-steps", type=int, default=0, help="steps of LeNet alone (default: 10,000)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dataset", default=dataset, help=f"default: {dataset}")
    p.add_argument("--data-dir", default=data_dir, help=f"default: {data_dir}")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: each one's default)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of every framework, in alternating order (default 3)",
    )
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
    p.add_argument(
        "--parity-route",
        default="exact",
        help="parity: mnistlab's train.route (default exact, the presets' own)",
    )
    p.add_argument("--run", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dataset == "mnist-sample":
        args.data_dir = None
    if args.run == "jax" and args.serve:  # seed_mlp.py --jax: warm steps timed on request
        from ports import jax_optax

        folder, validation = data_folder(args.dataset, args.data_dir)
        data = load(folder, validation)
        jax_optax.serve_rounds(PROGRAMS[args.programs], data, args.seed, args.threads)
        return 0
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
