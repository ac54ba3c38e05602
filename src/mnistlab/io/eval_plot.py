"""One PNG for ``mnistlab eval --plot``: the confusion matrix and the worst-misclassified digits.

Drawn on a bare matplotlib ``Figure`` (no pyplot, no GUI backend), so it works on a server and in
tests; written atomically like every file mnistlab produces.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mnistlab.atomic import atomic_write
from mnistlab.config.schema import INPUT_SHAPE
from mnistlab.errors import TrackingError
from mnistlab.io.digits import digit_grid

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def worst_mistakes(probs: torch.Tensor, labels: torch.Tensor, count: int = 16) -> list[int]:
    """Indices of misclassified examples, most confidently wrong first."""
    predicted = probs.argmax(dim=1)
    wrong = torch.nonzero(predicted != labels).flatten()
    confidence = probs[wrong, predicted[wrong]]
    order = torch.argsort(confidence, descending=True, stable=True)
    return wrong[order][:count].tolist()


def plot_evaluation(
    path: str | Path,
    confusion: Sequence[Sequence[int]],
    images: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    class_names: Sequence[str],
    title: str = "",
    count: int = 16,
    image_shape: tuple[int, int, int] = INPUT_SHAPE,
) -> Path:
    """Confusion matrix (left) and a grid of the ``count`` worst mistakes (right) as a PNG."""
    fig = evaluation_figure(
        confusion, images, labels, probs, class_names, title, count, image_shape
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write(path, buffer.getvalue(), what="evaluation plot", error=TrackingError)


def evaluation_figure(
    confusion: Sequence[Sequence[int]],
    images: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    class_names: Sequence[str],
    title: str = "",
    count: int = 16,
    image_shape: tuple[int, int, int] = INPUT_SHAPE,
) -> Figure:
    """Confusion matrix (left) and a grid of the ``count`` worst mistakes (right), as a figure
    a notebook shows inline (``io.figures``)."""
    from mnistlab.io.figures import new_figure

    n = len(class_names)
    fig = new_figure(figsize=(13, 6), dpi=100)
    grid = fig.add_gridspec(4, 8, width_ratios=[1.2] * 4 + [1] * 4)
    ax = fig.add_subplot(grid[:, :4])
    cm = torch.tensor(confusion, dtype=torch.float64)
    ax.imshow(cm.numpy(), cmap="Blues")
    ax.set_xticks(range(n), list(class_names), rotation=45 if max(map(len, class_names)) > 2 else 0)
    ax.set_yticks(range(n), list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    peak = float(cm.max()) if cm.numel() else 0.0
    for i in range(n):
        for j in range(n):
            value = int(cm[i, j])
            if value:
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > peak / 2 else "black",
                )
    worst = worst_mistakes(probs, labels, count)
    cell = fig.add_subplot(grid[:, 4:])
    cell.axis("off")
    if worst:
        captions = []
        for i in worst:
            p = int(probs[i].argmax())
            truth, guess = class_names[int(labels[i])], class_names[p]
            captions.append(f"{truth} ->\n{guess} {100 * float(probs[i, p]):.0f}%")
        picture = digit_grid(images[worst].cpu().numpy(), captions, image_shape, cols=4, scale=4)
        cell.imshow(picture, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    fig.suptitle(title or "evaluation")
    fig.text(0.78, 0.01, "worst mistakes: true -> predicted (confidence)", ha="center", fontsize=8)
    return fig
