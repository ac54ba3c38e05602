"""Execute the lessons (docs/lessons/*.ipynb) and store their outputs in place.

Each notebook runs top to bottom in a fresh Python kernel (nbclient), in a temporary working
folder, so whatever a lesson writes (run folders, checkpoints) never lands in the checkout; the
executed notebook, outputs and figures included, is written back over the original. The kernel
imports this checkout's mnistlab (``src`` is put first on its ``PYTHONPATH``) and finds full
MNIST through ``MNISTLAB_DATA`` when it is given (``--data-dir``, or ``../shared/data/mnist``
beside the checkout); without it the lessons train on the bundled sample and say so.

The machine, the data, each lesson's wall time and the 1-minute load average at its end go into
the notebook's metadata (``metadata.mnistlab``) and are printed, so the stored outputs say where
they came from.

    python scripts/run_lessons.py                          # every lesson, in place
    python scripts/run_lessons.py docs/lessons/01-softmax.ipynb
    python scripts/run_lessons.py --check                  # execute, write nothing back
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mnistlab.apps.environment import cpu_name

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "docs" / "lessons"
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def full_mnist(given: Path | None) -> Path | None:
    """The folder of full MNIST to hand the lessons: ``given``, ``$MNISTLAB_DATA``, or
    ``../shared/data/mnist`` beside the checkout; None when none of them holds it."""
    env = os.environ.get("MNISTLAB_DATA")
    places = [given] if given else []
    places += [Path(env).expanduser(), Path(env).expanduser() / "mnist"] if env else []
    places.append(SHARED_MNIST)
    for place in places:
        if place and any(place.glob("train-images-idx3-ubyte*")):
            return place.resolve()
    if given:
        raise SystemExit(f"run_lessons: {given} holds no MNIST training images")
    return None


def lesson_env(data: Path | None) -> dict[str, str]:
    """The kernel's environment: this checkout's mnistlab first; full MNIST when there is one."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT / "src"), env.get("PYTHONPATH")] if p)
    env.pop("MNISTLAB_DATA", None)
    if data is not None:
        env["MNISTLAB_DATA"] = str(data)
    env.pop("MPLBACKEND", None)  # the kernel's own inline backend draws the figures
    return env


def execute(path: Path, data: Path | None, *, timeout: int = 600) -> tuple[Any, float]:
    """Run one notebook in a temporary folder; returns the executed notebook and its seconds.

    A cell that raises stops the run with nbclient's CellExecutionError (the cell and its
    traceback), which is what CI reports."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="mnistlab-lesson-") as work:
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": work}},
            record_timing=False,
        )
        started = time.perf_counter()
        client.execute(env=lesson_env(data))  # the kernel's whole environment
        seconds = time.perf_counter() - started
    return notebook, seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebooks", nargs="*", type=Path, help="default: every docs/lessons/*.ipynb")
    p.add_argument("--data-dir", type=Path, help="full MNIST's folder (default: found, or none)")
    p.add_argument("--sample", action="store_true", help="train on the bundled sample")
    p.add_argument("--check", action="store_true", help="execute only; write nothing back")
    p.add_argument("--timeout", type=int, default=600, help="seconds a cell may take")
    args = p.parse_args(argv)

    import nbformat
    import torch

    notebooks = args.notebooks or sorted(LESSONS.glob("*.ipynb"))
    if not notebooks:
        raise SystemExit(f"run_lessons: no notebooks in {LESSONS}")
    data = None if args.sample else full_mnist(args.data_dir)
    machine = (
        f"{cpu_name()}, {len(os.sched_getaffinity(0))} cores, Python "
        f"{platform.python_version()}, torch {torch.__version__}"
    )
    print(f"machine: {machine}")
    print(f"data: {'full MNIST in ' + str(data) if data else 'the bundled mnist-sample'}")
    for path in notebooks:
        if not path.is_file():
            raise SystemExit(f"run_lessons: {path} is not a file")
        notebook, seconds = execute(path, data, timeout=args.timeout)
        where = "checked" if args.check else "written"
        if not args.check:
            notebook.metadata["mnistlab"] = {
                "executed_on": machine,
                "data": "mnist" if data else "mnist-sample",
                "seconds": round(seconds, 1),
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
            tmp = path.with_suffix(".ipynb.tmp")
            nbformat.write(notebook, tmp)
            shutil.move(tmp, path)
        print(f"{path.name}: {seconds:.1f} s, {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
