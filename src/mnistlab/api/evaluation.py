"""Scoring a model from Python: ``mnistlab.evaluate`` (what ``mnistlab eval`` prints, as an object)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mnistlab.api.model import Model, load
from mnistlab.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("mnistlab")

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Evaluation:
    """A model's figures on one split: accuracy, accuracy per class, the confusion matrix."""

    accuracy: float
    per_class: dict[str, float]
    """Accuracy on the examples of each true class, by class name (NaN where a class has none)."""
    confusion: np.ndarray
    """``confusion[true, predicted]`` counts, shape ``(classes, classes)``."""
    count: int
    split: str
    dataset: str
    class_names: list[str]
    probabilities: np.ndarray
    """Every example's class probabilities, shape ``(count, classes)``."""
    labels: np.ndarray
    images: np.ndarray
    """The examples as the model saw them, ``(count, 784)`` (for ``plot``'s worst mistakes)."""
    image_shape: tuple[int, int, int] = (1, 28, 28)

    def __repr__(self) -> str:
        return (
            f"<mnistlab.Evaluation {self.dataset} {self.split}: {100 * self.accuracy:.2f}% of "
            f"{self.count:,}>"
        )

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(f"<th>{escape(n)}</th>" for n in self.per_class)
        cells = "".join(
            f"<td>{'-' if math.isnan(a) else f'{100 * a:.1f}%'}</td>"
            for a in self.per_class.values()
        )
        return (
            f"<p>mnistlab evaluation on {escape(self.dataset)} {escape(self.split)}: "
            f"<b>{100 * self.accuracy:.2f}%</b> of {self.count:,}</p>"
            f"<table><tr><th>class</th>{head}</tr><tr><th>accuracy</th>{cells}</tr></table>"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "split": self.split,
            "count": self.count,
            "accuracy": self.accuracy,
            "per_class": {k: None if math.isnan(v) else v for k, v in self.per_class.items()},
            "confusion": self.confusion.tolist(),
        }

    def plot(self, count: int = 16) -> Figure:
        """The confusion matrix beside the ``count`` most confident mistakes (shown inline in a
        notebook; ``.savefig(path)`` writes it) — ``mnistlab eval --plot``'s picture."""
        from mnistlab.io.eval_plot import evaluation_figure

        title = f"{self.dataset} {self.split}: {100 * self.accuracy:.2f}% of {self.count:,}"
        return evaluation_figure(
            self.confusion.tolist(),
            torch.from_numpy(self.images),
            torch.from_numpy(self.labels),
            torch.from_numpy(self.probabilities),
            self.class_names,
            title=title,
            count=count,
            image_shape=self.image_shape,
        )


def evaluate(
    model: Any,
    split: str = "test",
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    raw_weights: bool = False,
) -> Evaluation:
    """Score ``model`` — a ``Model``, what ``mnistlab.train`` returned, or a run folder /
    checkpoint spec to load — on ``split`` (train, validation or test) of the data it was trained
    on, or of ``dataset`` (in ``data_dir``). A model scored on a dataset with other classes is
    logged as a warning: that accuracy says nothing about it."""
    from mnistlab.config import set_value
    from mnistlab.session import load_data
    from mnistlab.session.data import dataset_mismatch
    from mnistlab.training.metrics import summarize

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: choose {', '.join(SPLITS)}")
    if hasattr(model, "model") and isinstance(model.model, Model):  # a TrainingResult
        model = model.model
    if not isinstance(model, Model):
        model = load(model, raw_weights=raw_weights)
    elif raw_weights:
        raise ConfigError(
            "raw_weights= applies to a run loaded here: mnistlab.load(run, raw_weights=True)"
        )
    config = set_value(model.config, "train.device", str(model.device))
    if dataset is not None:
        config = set_value(config, "data.dataset", dataset)
    if data_dir is not None:
        config = set_value(config, "data.data_dir", str(Path(data_dir).expanduser().absolute()))
    config, data = load_data(config, quiet=True, warn=log.warning)
    mismatch = dataset_mismatch(model.config.data.dataset, data.name)
    if mismatch:
        log.warning(mismatch)
    part = data.split(split)
    with torch.no_grad():
        chunks = [
            torch.softmax(model.module(part.images[i : i + 1000].to(model.device)).float(), dim=1)
            for i in range(0, len(part), 1000)
        ]
    probs = torch.cat(chunks).cpu() if chunks else torch.empty(0, data.num_classes)
    labels = part.labels.cpu()
    summary = summarize(probs.argmax(dim=1), labels, data.num_classes)
    names = list(data.class_names)
    return Evaluation(
        accuracy=summary.accuracy,
        per_class=dict(zip(names, summary.per_class, strict=True)),
        confusion=np.asarray(summary.confusion, dtype=np.int64),
        count=summary.count,
        split=split,
        dataset=data.name,
        class_names=names,
        probabilities=probs.numpy(),
        labels=labels.numpy(),
        images=part.images.cpu().numpy(),
        image_shape=data.input_shape,
    )
