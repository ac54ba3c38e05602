"""A trained model in Python: ``mnistlab.load``, ``Model.predict``, ``probabilities``, ``save``
and ``export``.

Inputs to ``predict`` follow the model to its device. Images go through the same preprocessing
as ``mnistlab predict`` and ``mnistlab serve``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mnistlab.errors import CheckpointError, DataError

if TYPE_CHECKING:
    from PIL import Image

    from mnistlab.config import Config

log = logging.getLogger("mnistlab")

SERVE_MAX_PIXELS = 4_000_000
"""Images decoded from bytes (``mnistlab serve``) may hold at most this many pixels (2000x2000):
a small upload that claims more is a decompression bomb."""

SIDE = 28


@dataclass(frozen=True)
class Prediction:
    """One image read by a model: the winner, every class's probability, what the model saw."""

    label: int
    class_name: str
    probability: float
    probabilities: np.ndarray
    """Shape ``(num_classes,)``, sums to 1."""
    image: np.ndarray
    """The 28x28 float32 digit in [0, 1] the model was given (after preprocessing)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "class": self.class_name,
            "probability": self.probability,
            "probabilities": [float(p) for p in self.probabilities],
        }

    def __repr__(self) -> str:
        return f"<Prediction {self.class_name} ({100 * self.probability:.1f}%)>"


def decode_image(data: bytes, *, max_pixels: int = SERVE_MAX_PIXELS) -> np.ndarray:
    """Grey levels in [0, 1] from the bytes of an image file, never written to disk (the same
    decoder as ``mnistlab predict``, with a smaller pixel limit)."""
    from mnistlab.data.images import decode_image as decode

    if not data:
        raise DataError("empty image: the request had no bytes")
    return decode(io.BytesIO(data), where="the image", max_pixels=max_pixels)


def _as_array(item: Any) -> np.ndarray:
    """A real-valued float32 array from numbers (refusing what is not a grey picture)."""
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    try:
        arr = np.asarray(item)
    except (ValueError, TypeError) as exc:
        raise DataError(f"cannot read {type(item).__name__} as an image: {exc}") from None
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise DataError("the array holds complex numbers; give real grey levels")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"expected numbers, got an array of {arr.dtype}")
    return arr.astype(np.float32)


def _as_digit(item: Any) -> np.ndarray:
    """A 28x28 float32 digit from an array, a PIL image or a path.

    A 28x28 (or 784) array is taken as MNIST-ready: light ink on black, in [0, 1] (0-255 integers
    are scaled). Any other 2-D array, a PIL image or a file is a picture of a digit and goes
    through ``mnistlab predict``'s preprocessing (crop, fit 20x20, centre by mass)."""
    from PIL import Image

    from mnistlab.data.images import image_to_digit, preprocess, to_grey

    if isinstance(item, str | Path):
        return image_to_digit(item)
    if isinstance(item, Image.Image):
        return preprocess(to_grey(item))
    arr = _as_array(item)
    if arr.shape == (SIDE * SIDE,):
        arr = arr.reshape(SIDE, SIDE)
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(f"expected a 28x28 digit or a 2-D grey image; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError("the array holds NaN or infinite values")
    if arr.max() > 1.0:
        arr = arr / 255.0
    if arr.shape == (SIDE, SIDE):
        return np.clip(arr, 0.0, 1.0)
    return preprocess(np.clip(arr, 0.0, 1.0))


def _items(inputs: Any, batch: bool | None) -> tuple[list[Any], bool]:
    """``(items, single)``. The rule, never a guess from a size: a list or tuple holds several
    inputs; an array of 3 dimensions is a stack of pictures; a 2-D array with 784 columns is a
    batch of flat digits (N x 784, whatever N); any other 2-D array, a 784-vector, a PIL image or
    a path is one input. ``batch=True``/``False`` says which it is instead."""
    if batch is False:
        return [inputs], True
    if isinstance(inputs, list | tuple):
        return list(inputs), False
    if isinstance(inputs, np.ndarray | torch.Tensor):
        flat_rows = inputs.ndim == 2 and inputs.shape[1] == SIDE * SIDE
        if inputs.ndim == 3 or flat_rows or (batch and inputs.ndim >= 1):
            return list(inputs), False
    if batch:
        raise DataError(
            f"batch=True needs a list, a tuple or an array of inputs, not {type(inputs).__name__}"
        )
    return [inputs], True


class Model:
    """A trained classifier ready to read digits: ``predict``, ``probabilities``, ``save``,
    ``export``.

    ``module`` is the ``torch.nn.Module`` (in eval mode); ``config`` the settings it was trained
    with; ``info`` says what it is (preset, dataset, steps, accuracies); ``class_names`` the names
    of its classes (Fashion-MNIST's clothes, KMNIST's kana, digits otherwise)."""

    def __init__(
        self,
        module: torch.nn.Module,
        config: Config,
        info: dict[str, Any],
        state: dict[str, Any] | None = None,
    ):
        from mnistlab.data.registry import class_names

        self.module = module.eval()
        self.config = config
        self.info = info
        self._state = state
        num_classes = int(info.get("num_classes") or 10)
        self.class_names: list[str] = class_names(config.data.dataset, num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def __repr__(self) -> str:
        acc = self.info.get("test_accuracy")
        figure = f", test accuracy {100 * acc:.2f}%" if acc is not None else ""
        return (
            f"<mnistlab.Model {self.info.get('preset')} on {self.info.get('dataset')}, "
            f"{self.info.get('steps'):,} steps{figure}>"
        )

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(
            f"<tr><th style='text-align:left'>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
            for k, v in self.info.items()
            if v is not None
        )
        return f"<table><caption>mnistlab model</caption>{rows}</table>"

    @torch.no_grad()
    def _probs(self, digits: list[np.ndarray]) -> np.ndarray:
        if not digits:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        batch = torch.from_numpy(np.stack(digits).reshape(len(digits), SIDE * SIDE))
        logits = self.module(batch.to(self.device))
        probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        if not np.isfinite(probs).all():
            raise CheckpointError(
                "the model's output is not finite (NaN or infinite weights): it cannot read "
                "digits; load an earlier checkpoint of the run"
            )
        return probs

    def probabilities(self, inputs: Any, *, batch: bool | None = None) -> np.ndarray:
        """Class probabilities, shape ``(N, num_classes)``, for one input or several (see
        ``predict`` for what counts as several)."""
        items, _ = _items(inputs, batch)
        return self._probs([_as_digit(i) for i in items])

    def predict(self, inputs: Any, *, batch: bool | None = None) -> Any:
        """A ``Prediction`` for one input, a list of them for several.

        One input: a 28x28 array (MNIST-ready: light ink on black, in [0, 1] or 0-255), a
        784-vector, a picture of any other size (2-D array), a PIL image or an image file's path.
        Several: a list or tuple of those, an N x H x W array, or an N x 784 array of flat digits.
        ``batch=True`` or ``False`` says which it is where the rule does not suit."""
        items, single = _items(inputs, batch)
        digits = [_as_digit(i) for i in items]
        probs = self._probs(digits)
        out = []
        for digit, p in zip(digits, probs, strict=True):
            label = int(p.argmax())
            out.append(Prediction(label, self.class_names[label], float(p[label]), p, digit))
        return out[0] if single else out

    def save(
        self, path: str | Path, *, weights_only: bool = False, overwrite: bool = False
    ) -> Path:
        """Write this model as an mnistlab checkpoint file (``mnistlab.load(path)``,
        ``mnistlab eval/predict/export/serve path`` read it). It is the whole training state of
        the run's last step, so ``mnistlab train --resume path`` can go on from it too; with
        ``weights_only`` it keeps only the weights this model uses (a quarter to half the size;
        it loads everywhere but cannot be resumed). An existing file is kept unless
        ``overwrite``."""
        from mnistlab.io.checkpoint import save_checkpoint
        from mnistlab.io.checkpoint import weights_only as only_weights

        if self._state is None:
            raise CheckpointError("this model has no training state to save (no step ran)")
        path = Path(path)
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder: give the checkpoint file's name (x.pt)")
        if path.exists() and not overwrite:
            raise CheckpointError(f"{path} exists: pass overwrite=True to replace it")
        state = self._state
        if weights_only:
            state = only_weights(state, use_ema=bool(self.info.get("ema_weights")))
        written = save_checkpoint(path, state)
        log.info("saved %s", written)
        return written

    def export(
        self, path: str | Path, format: str | None = None, *, overwrite: bool = False
    ) -> Path:
        """Write the model for other tools: ``safetensors`` (weights and config), ``onnx``
        (needs ``pip install "mnistlab[export]"``) or ``torchscript``; the format follows the
        file's suffix unless given (``.pt`` is TorchScript here; ``save`` writes checkpoints)."""
        from mnistlab.config import to_dict
        from mnistlab.io.export import FORMATS, export_model

        path = Path(path)
        if format is None:
            by_suffix = {suffix: name for name, suffix in FORMATS.items()}
            format = by_suffix.get(path.suffix)
            if format is None:
                raise CheckpointError(
                    f"cannot tell the export format from {path.name!r}: give format= "
                    f"({', '.join(FORMATS)}) or a {', '.join(FORMATS.values())} file"
                )
        if path.exists() and not overwrite:
            raise CheckpointError(f"{path} exists: pass overwrite=True to replace it")
        metadata = {
            "format": "mnistlab-model",
            "preset": self.config.preset,
            "step": str(self.info.get("steps")),
            "weights": "ema" if self.info.get("ema_weights") else "raw",
            "input": "[N, 784] float32 in [0, 1]",
            "config": to_dict(self.config),
        }
        device = self.device
        try:
            return export_model(self.module.to("cpu"), format, path, metadata)
        finally:
            self.module.to(device)


def _test_accuracy(spec: str | Path, run_dir: Path | None) -> float | None:
    """The final test accuracy the run recorded in its metrics.jsonl, or the manifest's for a
    model that comes with mnistlab; ``None`` when nothing says."""
    from mnistlab import pretrained

    if pretrained.is_pretrained(spec):
        name = str(spec)[len(pretrained.PREFIX) :].strip().lower()
        figure = pretrained.manifest().get(name, {}).get("test_accuracy")
        return float(figure) if isinstance(figure, int | float) else None
    if run_dir is None:
        return None
    from mnistlab.errors import TrackingError
    from mnistlab.io.plots import read_metrics

    try:
        records = read_metrics(run_dir)
    except TrackingError:
        return None
    found = [r["test_accuracy"] for r in records if r.get("test_accuracy") is not None]
    return float(found[-1]) if found else None


def load(run_or_checkpoint: str | Path, *, raw_weights: bool = False) -> Model:
    """The model of a run folder (its latest checkpoint), ``RUN:best`` or a checkpoint file,
    with the moving-average weights unless ``raw_weights``. Read safely (no code in a file can
    run), on the CPU."""
    from mnistlab.io.checkpoint import averaged, load_model, num_classes

    if not isinstance(run_or_checkpoint, str | Path):
        raise CheckpointError(
            f"mnistlab.load takes a run folder or a checkpoint file, not "
            f"{type(run_or_checkpoint).__name__}"
        )
    module, ckpt = load_model(run_or_checkpoint, use_ema=not raw_weights)
    config = ckpt.config
    info = {
        "checkpoint": str(ckpt.path),
        "preset": config.preset,
        "model": config.model.name,
        "dataset": config.data.dataset,
        "steps": ckpt.step,
        "validation_accuracy": ckpt.header.get("validation_accuracy"),
        "test_accuracy": _test_accuracy(run_or_checkpoint, ckpt.run_dir),
        "num_classes": num_classes(ckpt.state["model"]),
        "ema_weights": averaged(ckpt.state, use_ema=not raw_weights),
    }
    return Model(module, config, info, state=ckpt.state)


def digit_image(digit: np.ndarray, scale: int = 4) -> Image.Image:
    """A 28x28 digit as a PIL image (white ink on black), enlarged ``scale`` times for display."""
    from PIL import Image

    pixels = (np.clip(digit, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize(
        (SIDE * scale, SIDE * scale), Image.Resampling.NEAREST
    )
