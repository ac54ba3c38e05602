"""Instructions per seed-mlp step, counted by valgrind's callgrind: a measure no busy neighbour
changes, for comparing routes on a shared machine.

Each subject starts under callgrind with counting off, warms up (imports, data, compilation,
200 steps), then counts ``--steps`` steps with one thread (``callgrind_control --instr=on``):
the instructions of a steady step, validation and the loop's boundaries left out. For mnistlab
that is its fused engine by each route; for JAX the port's step. The data is the bundled sample
(the same step shapes as full MNIST).

Caveats, said with the figures: instructions are not time (a product's instruction count says
nothing of its cache misses or of how well its vector units are fed); and valgrind does not run
AVX-512, so under it every library takes its AVX2 kernels (MKL already does on AMD CPUs;
oneDNN and XLA do only here). The count compares what each route *does* around the products
(passes over the weights, small kernels, dispatch) better than the products themselves.

    python benchmarks/instructions.py                         # mnistlab's routes
    python benchmarks/instructions.py --jax /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = """
import sys
sys.path.insert(0, {here!r})
subject = sys.argv[1]
if subject == "jax":
    from catalog import data_folder
    from ports.common import PROGRAMS, load
    from ports.jax_optax import Trainer
    folder, validation = data_folder({dataset!r}, {data_dir!r})
    trainer = Trainer(PROGRAMS["mlp"], load(folder, validation), 1, 1)
    steps = trainer.advance
else:
    import torch
    from mnistlab.config import resolve
    from mnistlab.data import load_splits
    from mnistlab.training import build_run
    from mnistlab.training.dense import FusedDenseEngine
    settings = [f"train.route={{subject}}", "train.threads=1", "tracking.tensorboard=false"]
    run = build_run(resolve("seed-mlp", None, settings), load_splits({dataset!r}, {data_dir!r}))
    engine = FusedDenseEngine(run)
    losses = torch.zeros(100)
    def steps(n):
        for _ in range(n // 100):
            engine.run(run, 100, losses)
            run.step += 100
steps(200)  # warm: compilation, first-touch of every buffer
print("ready", flush=True)
steps(int(sys.stdin.readline()))
print("done", flush=True)
sys.stdin.readline()
"""


def count(python: str, script: Path, steps: int, subject: str) -> int:
    """Instructions callgrind counts while the child, already warm, trains ``steps`` steps of
    ``subject`` (instrumentation is off during start-up: it would take most of the time)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
               "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}  # fmt: skip
        child = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", python, str(script), subject],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env,
        )  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise SystemExit(f"{subject}: the child did not start: {child.communicate()[1][-800:]}")
        control = ["callgrind_control", "--instr=on", str(child.pid)]
        subprocess.run(control, check=True, capture_output=True)
        child.stdin.write(f"{steps}\n")
        child.stdin.flush()
        child.stdout.readline()  # done
        subprocess.run([*control[:1], "--instr=off", str(child.pid)], check=True,
                       capture_output=True)  # fmt: skip
        _, err = child.communicate("\n", timeout=600)
        found = re.search(r"Collected : (\d+)", err)
        if child.returncode != 0 or not found:
            raise SystemExit(f"callgrind failed for {subject}: {err[-800:]}")
        return int(found.group(1))


def main() -> int:
    # The bundled sample: the step's shapes are full MNIST's (batches of 100 of 784 pixels), and
    # reading 60,000 images under valgrind would take longer than the steps.
    dataset, data_dir = "mnist-sample", None
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--routes", default="exact,mkl,onednn")
    p.add_argument("--jax", metavar="PYTHON", help="an interpreter with jax and optax")
    p.add_argument("--steps", type=int, default=200, help="steps counted (a multiple of 100)")
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)")
        return 1
    python = os.path.realpath(sys.executable)  # valgrind must see the interpreter, not a shim
    subjects = [(python, r) for r in args.routes.split(",")]
    if args.jax:
        subjects.append((os.path.realpath(args.jax), "jax"))
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "child.py"
        script.write_text(CHILD.format(here=str(HERE), dataset=dataset, data_dir=data_dir))
        print(f"instructions per step (callgrind, 1 thread, {args.steps} warm steps):")
        for interpreter, subject in subjects:
            per_step = count(interpreter, script, args.steps, subject) / args.steps
            name = "jax port" if subject == "jax" else f"mnistlab, train.route={subject}"
            print(f"  {name:28s}: {per_step / 1e6:8.2f} million", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
