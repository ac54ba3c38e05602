"""The Python API for notebooks and scripts: ``mnistlab.train(...)`` and ``mnistlab.load(...)``.

    import mnistlab
    result = mnistlab.train("seed-mlp", steps=2000, dataset="mnist-sample")
    result.test_accuracy, result.history, result.figure()
    model = mnistlab.load("runs/my-run")          # a run folder, RUN:best or a checkpoint file
    model.predict("digit.png").label

This sits at the top with ``apps``: it resolves settings and data with the same functions as
``mnistlab train`` (``apps.train_cmd``), runs the one training loop, and reads digits with the
same preprocessing as ``mnistlab predict`` (``apps.predict``). Data goes to the device the config
names (``train.device``, default auto: CUDA when there is one); inputs to ``predict`` follow the
model to its device.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mnistlab.errors import ConfigError, DataError
from mnistlab.io.callbacks import Callback

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

    from mnistlab.config import Config
    from mnistlab.train import TrainResult

SERVE_MAX_PIXELS = 4_000_000
"""Images decoded from bytes (``mnistlab serve``) may hold at most this many pixels (2000x2000):
a small upload that claims more is a decompression bomb."""


# -- predictions -----------------------------------------------------------------------------------
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


def decode_image(data: bytes, *, max_pixels: int = SERVE_MAX_PIXELS) -> np.ndarray:
    """Grey levels in [0, 1] from the bytes of an image file, never written to disk (the same
    decoder as ``mnistlab predict``, with a smaller pixel limit)."""
    from mnistlab.apps.predict import decode_image as decode

    if not data:
        raise DataError("empty image: the request had no bytes")
    return decode(io.BytesIO(data), where="the image", max_pixels=max_pixels)


def _as_digit(item: Any) -> np.ndarray:
    """A 28x28 float32 digit from an array, a PIL image or a path.

    A 28x28 (or 784) array is taken as MNIST-ready: light ink on black, in [0, 1] (0-255 integers
    are scaled). Any other 2-D array, a PIL image or a file is a picture of a digit and goes
    through ``mnistlab predict``'s preprocessing (crop, fit 20x20, centre by mass)."""
    from PIL import Image

    from mnistlab.apps.predict import image_to_digit, preprocess, to_grey

    if isinstance(item, str | Path):
        return image_to_digit(item)
    if isinstance(item, Image.Image):
        return preprocess(to_grey(item))
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    arr = np.asarray(item)
    if arr.shape == (784,):
        arr = arr.reshape(28, 28)
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(f"expected a 28x28 digit or a 2-D grey image; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"expected numbers, got an array of {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError("the array holds NaN or infinite values")
    if arr.max() > 1.0:
        arr = arr / 255.0
    if arr.shape == (28, 28):
        return np.clip(arr, 0.0, 1.0)
    return preprocess(np.clip(arr, 0.0, 1.0))


def _items(inputs: Any) -> tuple[list[Any], bool]:
    """``(items, single)``: one input, a list of them, or a stack of arrays (N x 28 x 28, N x 784)."""
    if isinstance(inputs, list | tuple):
        return list(inputs), False
    if isinstance(inputs, np.ndarray | torch.Tensor) and (
        inputs.ndim == 3 or (inputs.ndim == 2 and inputs.shape[1] == 784 and inputs.shape[0] != 28)
    ):
        return list(inputs), False
    return [inputs], True


class Model:
    """A trained classifier ready to read digits: ``predict`` and ``probabilities``.

    ``module`` is the ``torch.nn.Module`` (in eval mode); ``info`` says what it is (preset,
    dataset, steps, accuracies); ``class_names`` the ten names (Fashion-MNIST's clothes, KMNIST's
    kana, digits otherwise)."""

    def __init__(self, module: torch.nn.Module, config: Config, info: dict[str, Any]):
        from mnistlab.apps.predict_cmd import class_names

        self.module = module.eval()
        self.config = config
        self.info = info
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
            f"{self.info.get('steps')} steps{figure}>"
        )

    @torch.no_grad()
    def _probs(self, digits: list[np.ndarray]) -> np.ndarray:
        batch = torch.from_numpy(np.stack(digits).reshape(len(digits), 784))
        logits = self.module(batch.to(self.device))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    def probabilities(self, inputs: Any) -> np.ndarray:
        """Class probabilities, shape ``(N, num_classes)``, for one input or several."""
        items, _ = _items(inputs)
        return self._probs([_as_digit(i) for i in items])

    def predict(self, inputs: Any) -> Any:
        """A ``Prediction`` for one input (array, PIL image, path), a list for several."""
        items, single = _items(inputs)
        digits = [_as_digit(i) for i in items]
        probs = self._probs(digits) if digits else np.zeros((0, len(self.class_names)))
        out = []
        for digit, p in zip(digits, probs, strict=True):
            label = int(p.argmax())
            out.append(Prediction(label, self.class_names[label], float(p[label]), p, digit))
        return out[0] if single else out


def _test_accuracy(run_dir: Path | None) -> float | None:
    """The final test accuracy the run recorded in its metrics.jsonl, if it has one."""
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
    with the moving-average weights unless ``raw_weights``. Loaded safely (no pickles), on the
    CPU."""
    from mnistlab.io.checkpoint import load_model, num_classes

    module, ckpt = load_model(run_or_checkpoint, use_ema=not raw_weights)
    config = ckpt.config
    info = {
        "checkpoint": str(ckpt.path),
        "preset": config.preset,
        "model": config.model.name,
        "dataset": config.data.dataset,
        "steps": ckpt.step,
        "validation_accuracy": ckpt.header.get("validation_accuracy"),
        "test_accuracy": _test_accuracy(ckpt.run_dir),
        "num_classes": num_classes(ckpt.state["model"]),
        "ema_weights": not raw_weights and bool((ckpt.state.get("ema") or {}).get("shadows")),
    }
    return Model(module, config, info)


# -- training --------------------------------------------------------------------------------------
def _setting_key(name: str, keys: list[str]) -> str:
    """``steps`` -> ``train.steps``; ``optim__lr`` -> ``optim.lr``; ambiguous or unknown: error."""
    if "__" in name:
        return name.replace("__", ".", 1)
    hits = [k for k in keys if k.rpartition(".")[2] == name]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        spelled = " or ".join(k.replace(".", "__") for k in hits)
        raise ConfigError(f"setting {name!r} is ambiguous: write {spelled}")
    return name  # set_value names the nearest valid key


def make_config(preset: str = "seed-mlp", **settings: Any) -> Config:
    """A preset with ``settings`` applied, checked like ``mnistlab train --set``. A setting is
    named by its key (``steps=2000``, ``lr=0.2``) or, where two sections share a key, as
    ``section__key`` (``train__seed=1``)."""
    from mnistlab.config import all_keys, resolve, set_value, validate

    config = resolve(preset)
    keys = all_keys()
    for name, value in settings.items():
        config = set_value(config, _setting_key(name, keys), value)
    if config.data.data_dir:  # as the train command does: valid from any working folder
        absolute = str(Path(config.data.data_dir).expanduser().absolute())
        config = set_value(config, "data.data_dir", absolute)
    if config.parallel.mode != "none":
        raise ConfigError("the Python API trains in one process; use `mnistlab train --parallel`")
    return validate(config)


class _Recorder(Callback):
    """Keeps every logged and evaluated record, and the last consolidated state the loop hands
    to checkpoint callbacks (the end of training is always one): the trained model."""

    def __init__(self) -> None:
        self.run: Any = None
        self.state: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []

    def wants(self, run: Any) -> Any:
        from mnistlab.io.callbacks import Wants

        return Wants(checkpoints=True)

    def on_start(self, run: Any) -> None:
        self.run = run

    def on_log(self, run: Any, record: Any) -> None:
        self.history.append(record.to_dict() if hasattr(record, "to_dict") else dict(record))

    def on_eval(self, run: Any, record: Any) -> None:
        self.history.append(record.to_dict() if hasattr(record, "to_dict") else dict(record))

    def on_checkpoint(self, run: Any, state: dict[str, Any], *, periodic: bool, best: bool) -> None:
        if periodic:
            self.state = state

    def weights(self) -> dict[str, torch.Tensor]:
        """The moving average's weights when the run kept one, else the trained parameters;
        with the model's buffers (batch norm's running statistics) where it has any."""
        if self.state is not None:
            from mnistlab.io.checkpoint import saved_weights

            return saved_weights(self.state)
        run = self.run  # no step ran (nothing to hand over): the weights as they are
        tensors = run.ema.shadows if run.ema is not None else run.parameters()
        return {**run.strategy.full_state(tensors), **run.strategy.full_buffers()}


@dataclass
class TrainingResult:
    """What ``mnistlab.train`` returns: the model, its figures and the record of the run."""

    model: Model
    config: Config
    result: TrainResult
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per log (step, loss, lr, ...) and per validation (step, validation_accuracy)."""
    run_dir: Path | None = None

    @property
    def test_accuracy(self) -> float | None:
        return self.result.test.accuracy if self.result.test else None

    def summary(self) -> dict[str, Any]:
        return self.result.summary() | {"run_dir": str(self.run_dir) if self.run_dir else None}

    def figure(self) -> Figure:
        """Learning curves: loss, validation accuracy and learning rate by step."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(13, 3.8), layout="constrained")
        ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
        for ax, key, label, scale in (
            (ax_loss, "loss", "loss (with L2)", 1.0),
            (ax_acc, "validation_accuracy", "validation accuracy (%)", 100.0),
            (ax_lr, "lr", "learning rate", 1.0),
        ):
            points = [(r["step"], r[key]) for r in self.history if r.get(key) is not None]
            ax.plot([s for s, _ in points], [scale * v for _, v in points], marker=".")
            ax.set_xlabel("step")
            ax.set_title(label)
            ax.grid(alpha=0.3)
        acc = self.test_accuracy
        name = f"{self.config.preset} on {self.result.dataset}"
        fig.suptitle(name + (f": test accuracy {100 * acc:.2f}%" if acc is not None else ""))
        return fig

    def _repr_html_(self) -> str:
        s = self.summary()
        rows = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in s.items())
        return f"<table><caption>mnistlab {self.config.preset}</caption>{rows}</table>"


def train(
    preset: str = "seed-mlp",
    *,
    run_dir: str | Path | None = None,
    quiet: bool = True,
    callbacks: Sequence[Any] = (),
    **settings: Any,
) -> TrainingResult:
    """Train ``preset`` with ``settings`` (``steps=2000``, ``dataset="mnist-sample"``,
    ``lr=0.2``, ``device="cpu"``, ...) in this process, on the device ``train.device`` names
    (auto: CUDA when available). With ``run_dir`` the run keeps checkpoints and metrics there,
    like ``mnistlab train --run-dir``, so ``mnistlab.load(run_dir)`` and ``mnistlab serve`` can
    use it; without, nothing is written. ``quiet=False`` prints the progress lines."""
    from mnistlab.apps.train_cmd import load_data, prepare_run_dir
    from mnistlab.io.checkpoint import CheckpointCallback
    from mnistlab.io.console import ConsoleCallback
    from mnistlab.io.tracking import TrackingCallback
    from mnistlab.models import build_model
    from mnistlab.parallel.device import resolve_device
    from mnistlab.train import train as train_loop

    config = make_config(preset, **settings)
    config, data = load_data(config, quiet=quiet)
    recorder = _Recorder()
    every: list[Any] = [recorder, ConsoleCallback(quiet=quiet), *callbacks]
    folder = None
    if run_dir is not None:
        folder = prepare_run_dir(Path(run_dir), config, True)
        c = config.checkpoint
        every += [CheckpointCallback(folder, every=c.every, keep=c.keep), TrackingCallback(folder)]
    result = train_loop(config, data, callbacks=every)
    module = build_model(
        config.model,
        num_classes=data.num_classes,
        seed=config.train.seed,
        input_shape=data.input_shape,
    )
    weights = recorder.weights()
    module.load_state_dict(weights)
    info = {
        "checkpoint": None,
        "preset": config.preset,
        "model": config.model.name,
        "dataset": data.name,
        "steps": result.steps,
        "validation_accuracy": result.validation_accuracy,
        "test_accuracy": result.test.accuracy if result.test else None,
        "num_classes": data.num_classes,
        "ema_weights": config.optim.ema_decay > 0,
    }
    model = Model(module.to(resolve_device(config.train.device)), config, info)
    return TrainingResult(model, config, result, recorder.history, folder)


def digit_image(digit: np.ndarray, scale: int = 4) -> Image.Image:
    """A 28x28 digit as a PIL image (white ink on black), enlarged ``scale`` times for display."""
    from PIL import Image

    pixels = (np.clip(digit, 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize(
        (28 * scale, 28 * scale), Image.Resampling.NEAREST
    )
