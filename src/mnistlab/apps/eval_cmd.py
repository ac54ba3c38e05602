"""``mnistlab eval CKPT``: accuracy, per-class accuracy and the confusion matrix of a checkpoint.

``CKPT`` is a checkpoint file, a run folder (its latest checkpoint) or ``RUN:best``. The EMA
weights are evaluated by default, as the classic programs report them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import torch

from mnistlab.io.progress import Progress

CKPT_HELP = (
    "a checkpoint file, a run folder (its latest checkpoint), RUN:best, or a model that comes "
    "with mnistlab: pretrained:cnn, pretrained:mlp, pretrained:fashion"
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "eval",
        help="accuracy and confusion matrix of a checkpoint",
        description="Evaluate a checkpoint on a split of its dataset (or another).",
    )
    p.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    p.add_argument(
        "--dataset",
        metavar="NAME",
        help="evaluate on this dataset (default: the one it was trained on)",
    )
    p.add_argument("--data-dir", metavar="DIR", help="folder holding the four IDX files")
    p.add_argument("--split", choices=("test", "validation", "train"), default="test")
    p.add_argument(
        "--raw-weights",
        action="store_true",
        help="evaluate the trained parameters instead of their moving average (EMA)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also write the confusion matrix and the worst mistakes as a PNG",
    )
    p.set_defaults(func=run_eval)


@torch.no_grad()
def probabilities(
    model: torch.nn.Module,
    images: torch.Tensor,
    batch: int = 1_000,
    progress: Progress | None = None,
) -> torch.Tensor:
    parts = []
    for i in range(0, images.shape[0], batch):
        parts.append(torch.softmax(model(images[i : i + batch]), dim=1))
        if progress is not None:
            progress.update(parts[-1].shape[0])
    if progress is not None:
        progress.close()
    return torch.cat(parts) if parts else torch.empty(0, 10)


def table(result: dict[str, Any], class_names: list[str]) -> str:
    """Per-class accuracy and the confusion matrix as aligned text."""
    width = max(5, max(len(c) for c in class_names))
    lines = [
        f"accuracy {100 * result['accuracy']:.2f}% on {result['count']:,} digits",
        "",
        f"{'class'.ljust(width)}  accuracy  count",
    ]
    for name, acc, row in zip(class_names, result["per_class"], result["confusion"], strict=True):
        shown = "-" if acc is None else f"{100 * acc:.2f}%"
        lines.append(f"{name.ljust(width)}  {shown:>8}  {sum(row):>5,}")
    cells = max(4, max(len(str(v)) for row in result["confusion"] for v in row) + 1)
    lines += [
        "",
        "confusion matrix (rows: true class, columns: predicted)",
        " " * width + "".join(c[: cells - 1].rjust(cells) for c in class_names),
    ]
    for name, row in zip(class_names, result["confusion"], strict=True):
        lines.append(name.ljust(width) + "".join(str(v).rjust(cells) for v in row))
    return "\n".join(lines)


# The bundled sample is drawn from MNIST itself: a model of one is fairly scored on the other.
def run_eval(args: argparse.Namespace) -> int:
    from mnistlab.config import set_value
    from mnistlab.errors import CheckpointError
    from mnistlab.io.checkpoint import averaged, load_model, num_classes
    from mnistlab.session import load_data
    from mnistlab.session.data import dataset_mismatch
    from mnistlab.training.metrics import summarize

    model, ckpt = load_model(args.checkpoint, use_ema=not args.raw_weights)
    config = set_value(ckpt.config, "train.device", "cpu")
    if args.dataset:
        config = set_value(config, "data.dataset", args.dataset)
    if args.data_dir:
        config = set_value(config, "data.data_dir", args.data_dir)
    config, data = load_data(config, quiet=args.json)
    classes = num_classes(ckpt.state["model"])
    if classes != data.num_classes:  # a confusion matrix needs one class list for both
        raise CheckpointError(
            f"the model in {ckpt.path} tells {classes} classes apart but {data.name} has "
            f"{data.num_classes}: evaluate it on a dataset of {classes} classes (--dataset)"
        )
    mismatch = dataset_mismatch(ckpt.config.data.dataset, data.name)
    if mismatch:
        print(f"mnistlab: warning: {mismatch}", file=sys.stderr)
    split = data.split(args.split)
    progress = Progress(len(split), desc="eval", unit="digit", enabled=not args.json)
    probs = probabilities(model, split.images, progress=progress)
    summary = summarize(probs.argmax(dim=1), split.labels, data.num_classes)
    uses_ema = averaged(ckpt.state, use_ema=not args.raw_weights)
    result: dict[str, Any] = {
        "checkpoint": str(ckpt.path),
        "step": ckpt.step,
        "preset": config.preset,
        "weights": "ema" if uses_ema else "raw",
        "dataset": data.name,
        "split": args.split,
        "count": summary.count,
        "accuracy": summary.accuracy,
        "per_class": [None if math.isnan(a) else a for a in summary.per_class],
        "confusion": summary.confusion,
        "trained_on": ckpt.config.data.dataset,
    }
    if mismatch:
        result["warning"] = mismatch
    names = list(data.class_names)
    if args.plot:
        from mnistlab.io.eval_plot import plot_evaluation

        title = (
            f"{config.preset} step {ckpt.step:,} ({result['weights']} weights) on "
            f"{data.name} {args.split}: {100 * summary.accuracy:.2f}%"
        )
        result["plot"] = str(
            plot_evaluation(
                args.plot,
                summary.confusion,
                split.images,
                split.labels,
                probs,
                names,
                title=title,
                image_shape=data.input_shape,
            )
        )
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"mnistlab eval: {ckpt.path} ({config.preset}, step {ckpt.step:,}, "
        f"{'EMA' if uses_ema else 'raw'} weights) on {data.name} {args.split}"
    )
    print(table(result, names))
    if args.plot:
        print(f"\nplot written to {result['plot']}")
    return 0
