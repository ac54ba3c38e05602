"""``mnistlab predict [CKPT] IMAGE... [--top K] [--json]``: read digits from real image files.

With images only, the model is ``pretrained:cnn`` (it comes with mnistlab: nothing to train
first). A first argument that names a model (a run folder, ``RUN:best``, a checkpoint file,
``pretrained:NAME``) reads the rest with that model; a path that is an image is always an image.
``--model CKPT`` says it outright. Each file is preprocessed the way MNIST was made
(``data/images.py``). A file that cannot be read, or holds no digit, gives one error line and the
others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from mnistlab.apps.eval_cmd import CKPT_HELP

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".webp"}
    | {".ppm", ".pgm", ".pbm", ".pnm", ".ico", ".tga"}
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "predict",
        help="predict the digit in image files (PNG, JPEG, BMP, ...)",
        description="Predict the digit in each image: phone photos or scans of paper (uneven "
        "light, lined or squared paper, coloured ink, pencil), drawings, any size, dark ink "
        "on light paper or light on dark. With images only, the model is pretrained:cnn.",
    )
    p.add_argument(
        "inputs",
        metavar="[CKPT] IMAGE",
        nargs="+",
        help=f"image files, optionally after the model to read them with: {CKPT_HELP}, or "
        "pretrained:cnn, pretrained:mlp, pretrained:fashion (default pretrained:cnn)",
    )
    p.add_argument(
        "--model",
        metavar="CKPT",
        help="the model to read with (then every positional argument is an image)",
    )
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


def _is_image_file(path: Path) -> bool:
    """A regular file that PIL recognises as an image (only its header is read)."""
    from PIL import Image

    try:
        if not path.is_file():
            return False
        with Image.open(path):
            return True
    except Exception:  # any file PIL cannot identify is not an image here
        return False


def names_a_model(text: str) -> bool:
    """Whether a first argument of ``mnistlab predict`` names the model rather than an image: a
    path with an image's suffix or holding an image is an image; ``pretrained:NAME``, a folder,
    ``RUN:best`` or any other file is a model (a missing file without an image's suffix too, so
    its error says "checkpoint ... does not exist")."""
    from mnistlab.pretrained import is_pretrained

    if is_pretrained(text):
        return True
    path = Path(text)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return False
    if path.is_dir() or text.endswith(":best"):
        return True
    return not _is_image_file(path)


def split_inputs(inputs: list[str], model: str | None) -> tuple[str, list[str], bool]:
    """``(checkpoint spec, image paths, whether the model is the default)`` from the positional
    arguments and ``--model``."""
    from mnistlab.errors import ConfigError
    from mnistlab.pretrained import DEFAULT, PREFIX

    if model is not None:
        return model, inputs, False
    if names_a_model(inputs[0]):
        if len(inputs) == 1:
            raise ConfigError(
                f"{inputs[0]} names a model but no image follows it: give image files after "
                "it (mnistlab predict RUN IMAGE...), or images only to use pretrained:cnn"
            )
        return inputs[0], inputs[1:], False
    return PREFIX + DEFAULT, inputs, True


def run_predict(args: argparse.Namespace) -> int:
    from mnistlab.data.images import image_to_digit
    from mnistlab.data.registry import class_names
    from mnistlab.errors import ConfigError, DataError
    from mnistlab.io.checkpoint import load_model

    if args.top < 1:
        raise ConfigError(f"--top must be at least 1; got {args.top}")
    spec, images, default = split_inputs(args.inputs, args.model)
    model, ckpt = load_model(spec, use_ema=not args.raw_weights)
    if default and not args.json:
        print(
            f"mnistlab: reading with {spec}, the model that comes with mnistlab (give a run "
            "first to use your own: mnistlab predict RUN IMAGE...)",
            file=sys.stderr,
        )
    digits, files, errors = [], [], []
    for name in images:
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
            json.dumps(
                {
                    "model": spec,
                    "checkpoint": str(ckpt.path),
                    "predictions": predictions,
                    "errors": errors,
                }
            )
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
