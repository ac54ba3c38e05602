"""What every port shares: the two programs' settings, the IDX files read with numpy alone, and
TensorFlow's ``DataSet.next_batch`` order. No port imports mnistlab, so each stays what a person
would write with that framework alone.
"""

from __future__ import annotations

import gzip
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Program:
    """One of the seed's programs (DESIGN.md §2); ``mnistlab`` is the preset it corresponds to."""

    name: str
    preset: str
    hidden: tuple[int, ...]
    init_std: float
    bias_init: float
    lr: float
    lr_decay: float
    """``lr * lr_decay ** (step / decay_steps)``; 1.0: constant."""
    l2: float
    """TensorFlow's ``l2 * sum(w**2) / 2`` over weight matrices only."""
    ema: float
    """Moving average ``min(ema, (1+n)/(10+n))``; 0: none."""
    steps: int
    eval_every: int
    batch_size: int = 100
    model: str = "dense"
    """``dense`` (784 → hidden → 10, ReLU between) or ``lenet`` (mnistlab's ``lenet`` model)."""
    init: str = "normal"
    """``normal`` or ``truncated_normal`` (redrawn beyond two standard deviations)."""
    momentum: float = 0.0
    staircase: bool = False
    """The decay's exponent in whole epochs (``decay_steps``) instead of fractional ones."""
    dropout: float = 0.0
    """Dropout before the logits layer (LeNet's dense layer), during training only."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PROGRAMS = {
    "softmax": Program("softmax", "seed-softmax", (), 0.1, 0.0, 0.5, 1.0, 0.0, 0.0, 1000, 100),
    "mlp": Program("mlp", "seed-mlp", (500,), 0.1, 0.1, 0.1, 0.99, 1e-4, 0.99, 30_000, 500),
    "lenet": Program(
        "lenet",
        "lenet",
        (512,),
        0.1,
        0.1,
        0.01,
        0.95,
        5e-4,
        0.99,
        10_000,
        500,
        model="lenet",
        init="truncated_normal",
        momentum=0.9,
        staircase=True,
        dropout=0.5,
    ),  # fmt: skip
}
PORTED = {"lenet": ("mnistlab", "jax")}
"""The programs only some frameworks have a port of (the others run every program)."""


@dataclass
class Data:
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def decay_steps(self) -> int:
        """``decay_steps = training examples / batch size`` (of 100), as the originals."""
        return max(1, len(self.train_y) // 100)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (``.gz`` or not) as a numpy array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder} has no {stem}(.gz)")


def load(folder: str | os.PathLike[str], validation_size: int) -> Data:
    """TensorFlow's ``read_data_sets``: pixels / 255 as float32 rows of 784, int64 labels, the
    first ``validation_size`` training images held out for validation."""
    folder = Path(folder)

    def images(stem: str) -> np.ndarray:
        x = read_idx(_find(folder, stem))
        return (x.reshape(x.shape[0], -1).astype(np.float32) / 255.0).astype(np.float32)

    def labels(stem: str) -> np.ndarray:
        return read_idx(_find(folder, stem)).astype(np.int64)

    x, y = images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte")
    v = validation_size
    return Data(
        x[v:],
        y[v:],
        x[:v],
        y[:v],
        images("t10k-images-idx3-ubyte"),
        labels("t10k-labels-idx1-ubyte"),
    )


class NextBatch:
    """TensorFlow tutorial's ``DataSet.next_batch``: an epoch-wise permutation; a batch crossing
    the end of an epoch takes the rest of the old one and the head of a new one."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.rng = np.random.RandomState(seed)
        self.perm = self.rng.permutation(n)
        self.index = 0

    def __call__(self) -> np.ndarray:
        start, size = self.index, self.batch_size
        if start + size <= self.n:
            self.index += size
            return self.perm[start : start + size]
        rest = self.perm[start:]
        self.perm = self.rng.permutation(self.n)
        self.index = size - len(rest)
        return np.concatenate([rest, self.perm[: self.index]])


class Clock:
    """Training time: from the first step to the end of the last, validation included."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def result(
    *,
    framework: str,
    version: str,
    program: Program,
    steps: int,
    seconds: float,
    test_accuracy: float,
    validation_accuracy: float | None,
    final_loss: float | None,
    device: str,
    threads: str,
    notes: str = "",
) -> dict[str, Any]:
    """The one record every port returns."""
    return {
        "framework": framework,
        "version": version,
        "program": program.name,
        "device": device,
        "threads": threads,
        "steps": steps,
        "train_seconds": seconds,
        "samples_per_second": steps * program.batch_size / seconds if seconds else 0.0,
        "test_accuracy": float(test_accuracy),
        "validation_accuracy": None if validation_accuracy is None else float(validation_accuracy),
        "final_loss": None if final_loss is None else float(final_loss),
        "notes": notes,
    }


def ema_decay(n: int | float, decay: float) -> float:
    """TensorFlow's ``ExponentialMovingAverage`` rule with ``num_updates = n``."""
    return min(decay, (1.0 + n) / (10.0 + n))
