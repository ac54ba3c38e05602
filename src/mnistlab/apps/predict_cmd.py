"""``mnistlab predict CKPT IMAGE... [--top K] [--json]``: read digits from real image files.

Each file is preprocessed the way MNIST was made (``data/images.py``). A file that cannot be
read gives one error line and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from mnistlab.apps.eval_cmd import CKPT_HELP


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "predict",
        help="predict the digit in image files (PNG, JPEG, BMP, ...)",
        description="Predict the digit in each image: any size, grey or colour or "
        "with alpha, dark ink on light paper or light on dark.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    p.add_argument(
        "--top",
        type=int,
        default=1,
        metavar="K",
        help="also show the K most likely classes (default 1)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--raw-weights",
        action="store_true",
        help="use the trained parameters instead of their moving average",
    )
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from mnistlab.data.images import image_to_digit
    from mnistlab.data.registry import class_names
    from mnistlab.errors import ConfigError, DataError
    from mnistlab.io.checkpoint import load_model

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1; got {args.top}")
    model, ckpt = load_model(args.checkpoint, use_ema=not args.raw_weights)
    digits, files, errors = [], [], []
    for name in args.images:
        try:
            digits.append(torch.from_numpy(image_to_digit(name)).reshape(-1))
            files.append(name)
        except DataError as exc:
            errors.append({"file": name, "error": str(exc)})
            print(f"mnistlab: error: {exc}", file=sys.stderr)
    predictions: list[dict[str, Any]] = []
    if digits:
        with torch.no_grad():
            probs = torch.softmax(model(torch.stack(digits)), dim=1)
        names = class_names(ckpt.config.data.dataset, probs.shape[1])
        k = min(args.top, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        for name, vals, idx in zip(files, values.tolist(), indices.tolist(), strict=True):
            top = [
                {"label": i, "class": names[i], "probability": v}
                for v, i in zip(vals, idx, strict=True)
            ]
            predictions.append({"file": name, **top[0], "top": top})
    if args.json:
        print(
            json.dumps({"checkpoint": str(ckpt.path), "predictions": predictions, "errors": errors})
        )
    else:
        width = max((len(p["file"]) for p in predictions), default=0)
        for p in predictions:
            line = f"{p['file'].ljust(width)}  {p['class']}  ({100 * p['probability']:.1f}%)"
            if args.top > 1:
                line += "   top: " + ", ".join(
                    f"{t['class']} {100 * t['probability']:.1f}%" for t in p["top"]
                )
            print(line)
    return 1 if errors else 0
