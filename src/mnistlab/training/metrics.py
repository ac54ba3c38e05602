"""Accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    per_class: list[float]
    """Accuracy on the examples of each true class (NaN where a class has none)."""
    confusion: list[list[int]]
    """``confusion[true][predicted]`` counts."""
    count: int

    def to_dict(self) -> dict[str, object]:
        return {
            "accuracy": self.accuracy,
            "per_class": self.per_class,
            "confusion": self.confusion,
            "count": self.count,
        }


def confusion_matrix(
    predicted: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    index = labels.to(torch.int64) * num_classes + predicted.to(torch.int64)
    counts = torch.bincount(index.cpu(), minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def summarize(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> EvalResult:
    cm = confusion_matrix(predicted, labels, num_classes)
    totals = cm.sum(dim=1)
    correct = cm.diagonal()
    per_class = [
        float(c) / float(t) if int(t) else float("nan")
        for c, t in zip(correct.tolist(), totals.tolist(), strict=True)
    ]
    n = int(labels.numel())
    return EvalResult(
        accuracy=float(correct.sum()) / n if n else float("nan"),
        per_class=per_class,
        confusion=cm.tolist(),
        count=n,
    )
