"""Train / validation / test tensors, the way TensorFlow's ``read_data_sets`` split MNIST.

Images become float32 in [0, 1] (pixel / 255), flattened to ``C*H*W`` (784 for the MNIST family;
the shape is the dataset's ``input_shape``); the first ``validation_size``
training images are the validation split. Everything lives in memory on the chosen device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mnistlab.config.schema import INPUT_SHAPE
from mnistlab.data.locate import Located, ProgressCallback, locate
from mnistlab.data.registry import get_dataset
from mnistlab.data.verify import load_arrays
from mnistlab.errors import DataError


@dataclass(frozen=True)
class Split:
    images: torch.Tensor
    """float32 ``[N, C*H*W]`` in [0, 1]."""
    labels: torch.Tensor
    """int64 ``[N]``."""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Split:
        """This split on ``device`` (itself when it is already there)."""
        device = torch.device(device)
        if self.images.device == device and self.labels.device == device:
            return self
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Splits:
    name: str
    source: str
    directory: Path
    num_classes: int
    class_names: tuple[str, ...]
    train: Split
    validation: Split
    test: Split
    input_shape: tuple[int, int, int] = INPUT_SHAPE
    """(channels, height, width) of one image before flattening."""

    def to(self, device: torch.device | str) -> Splits:
        """The same dataset with its three splits on ``device`` (itself when already there)."""
        moved = {k: getattr(self, k).to(device) for k in ("train", "validation", "test")}
        if all(moved[k] is getattr(self, k) for k in moved):
            return self
        return dataclasses.replace(self, **moved)

    def split(self, name: str) -> Split:
        if name not in ("train", "validation", "test"):
            raise DataError(f"unknown split {name!r}: choose train, validation or test")
        return getattr(self, name)


def _to_split(images: np.ndarray, labels: np.ndarray, device: torch.device | str) -> Split:
    flat = torch.from_numpy(np.ascontiguousarray(images)).reshape(images.shape[0], -1)
    x = flat.to(device=device, dtype=torch.float32).div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    return Split(x, y)


def splits_from_arrays(
    arrays: dict[str, np.ndarray],
    *,
    name: str,
    validation_size: int,
    device: torch.device | str = "cpu",
    source: str = "memory",
    directory: Path | None = None,
    num_classes: int = 10,
    class_names: tuple[str, ...] = (),
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
) -> Splits:
    """Split raw uint8 arrays (``train_images`` etc.) into the three tensors."""
    n_train = arrays["train_images"].shape[0]
    if not 0 <= validation_size < n_train:
        raise DataError(
            f"validation size {validation_size} leaves no training data: {name} has "
            f"{n_train} training images (set data.validation_size lower)"
        )
    v = validation_size
    return Splits(
        name=name,
        source=source,
        directory=directory or Path("."),
        num_classes=num_classes,
        class_names=class_names or tuple(str(i) for i in range(num_classes)),
        train=_to_split(arrays["train_images"][v:], arrays["train_labels"][v:], device),
        validation=_to_split(arrays["train_images"][:v], arrays["train_labels"][:v], device),
        test=_to_split(arrays["test_images"], arrays["test_labels"], device),
        input_shape=input_shape,
    )


def load_splits(
    name: str,
    data_dir: str | Path | None = None,
    *,
    validation_size: int | None = None,
    download: bool = True,
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
    located: Located | None = None,
) -> Splits:
    """Locate (or download), verify and load a registered dataset as in-memory tensors."""
    spec = get_dataset(name)
    if located is None:
        located = locate(name, data_dir, download=download, progress=progress)
    arrays = load_arrays(located)
    return splits_from_arrays(
        arrays,
        name=spec.name,
        validation_size=spec.validation_size if validation_size is None else validation_size,
        device=device,
        source=located.source,
        directory=located.directory,
        num_classes=spec.num_classes,
        class_names=tuple(spec.class_names),
        input_shape=spec.input_shape,
    )
