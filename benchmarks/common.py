"""Shared bits of the benchmarks: the machine's description and where the data is."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

from mnistlab.apps.environment import cpu_name

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def machine() -> str:
    cpu = cpu_name()
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; CUDA device: {cuda}; Python {platform.python_version()}"
    )


def default_data() -> tuple[str, str | None]:
    """Full MNIST from ../shared when this checkout has it, else the bundled sample."""
    if (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        return "mnist", str(SHARED_MNIST)
    return "mnist-sample", None


def add_run_args(parser: argparse.ArgumentParser, *, steps: int, repeats: int) -> None:
    """The flags every in-process benchmark takes."""
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")


def start(args: argparse.Namespace) -> tuple[str, str | None]:
    """Apply --threads, print the machine, and return the dataset to use."""
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset, data_dir = default_data()
    print(f"machine: {machine()}")
    return args.dataset or dataset, args.data_dir or data_dir
