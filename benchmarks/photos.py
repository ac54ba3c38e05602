"""How well mnistlab reads phone photos of handwritten digits: accuracy per condition.

Renders ``photo_gen``'s scored set (800 JPEG photos of MNIST test digits, 100 per condition),
reads each the way ``mnistlab predict`` does (decode, preprocess), and prints each model's
accuracy per condition and over the whole set. A photo the preprocessing refuses as holding no
digit counts as wrong. Then the plain check: MNIST's 10,000 test digits written as clean 28x28
PNG files and read back through the same preprocessing, against the model on the raw arrays.

    python benchmarks/photos.py --data-dir ../shared/data/mnist            # the docs' table
    python benchmarks/photos.py --set tuning --models pretrained:cnn        # what was tuned on
    python benchmarks/photos.py --cache DIR                                  # render once

``--json FILE`` also writes every figure (and each misread photo's parameters).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

import photo_gen
from common import SHARED_MNIST, machine
from mnistlab.data import load_arrays, locate
from mnistlab.data.images import decode_image, preprocess
from mnistlab.errors import NoDigitError
from mnistlab.io.checkpoint import load_model
from photo_gen import CONDITIONS, SCORED, TUNING, Photo, SetSpec, photo_set


def rendered_set(
    images: np.ndarray,
    labels: np.ndarray,
    spec: SetSpec,
    per_condition: int | None,
    cache: str | None,
) -> list[Photo]:
    """``photo_set``'s photos, kept in ``cache`` (a folder) once rendered: rendering 800 photos
    takes minutes. A cache made by another version of photo_gen.py is rendered again."""
    if cache is None:
        return photo_set(images, labels, spec, per_condition=per_condition)
    source = hashlib.sha256(Path(photo_gen.__file__).read_bytes()).hexdigest()[:16]
    count = spec.per_condition if per_condition is None else per_condition
    folder = Path(cache) / f"{spec.name}-{spec.seed}-{count}-{source}"
    index = folder / "photos.json"
    if index.exists():
        entries = json.loads(index.read_text())
        return [
            Photo(
                (folder / e["file"]).read_bytes(),
                e["condition"],
                e["label"],
                e["index"],
                e["params"],
            )
            for e in entries
        ]
    photos = photo_set(images, labels, spec, per_condition=per_condition)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, p in enumerate(photos):
        name = f"{k:04d}-{p.condition}-{p.index:05d}.jpg"
        (folder / name).write_bytes(p.jpeg)
        entries.append(
            {
                "file": name,
                "condition": p.condition,
                "label": p.label,
                "index": p.index,
                "params": p.params,
            }
        )
    index.write_text(json.dumps(entries))
    return photos


def read_photo(jpeg: bytes) -> np.ndarray | None:
    """The 28x28 digit ``mnistlab predict`` would give the model, or None where it finds none."""
    try:
        return preprocess(decode_image(io.BytesIO(jpeg), where="photo"), where="photo")
    except NoDigitError:
        return None


@torch.no_grad()
def predictions(model: torch.nn.Module, digits: list[np.ndarray | None]) -> np.ndarray:
    """Each digit's predicted class; -1 where there was no digit."""
    out = np.full(len(digits), -1, dtype=np.int64)
    found = [i for i, d in enumerate(digits) if d is not None]
    for start in range(0, len(found), 500):
        part = found[start : start + 500]
        batch = torch.from_numpy(np.stack([digits[i] for i in part]).reshape(len(part), -1))
        out[part] = model(batch).argmax(1).numpy()
    return out


def clean_files(images: np.ndarray) -> list[np.ndarray]:
    """MNIST digits as the clean files a person would make of them (dark ink on white, 28x28
    PNG), read back through ``decode_image`` and ``preprocess``."""
    digits = []
    for img in images:
        buffer = io.BytesIO()
        Image.fromarray(255 - img, mode="L").save(buffer, format="PNG")
        buffer.seek(0)
        digits.append(preprocess(decode_image(buffer, where="digit")))
    return digits


def table(rows: dict[str, dict[str, float]], models: list[str]) -> str:
    head = "| condition | photos | " + " | ".join(models) + " |"
    lines = [head, "| --- | --- | " + " | ".join("---" for _ in models) + " |"]
    for name, row in rows.items():
        cells = " | ".join(f"{100 * row[m]:.1f}%" for m in models)
        lines.append(f"| {name} | {int(row['count'])} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(SHARED_MNIST), help="full MNIST")
    parser.add_argument("--set", choices=("scored", "tuning"), default="scored")
    parser.add_argument(
        "--models", nargs="+", default=["pretrained:cnn", "pretrained:mlp"], metavar="CKPT"
    )
    parser.add_argument("--per-condition", type=int, help="fewer photos per condition")
    parser.add_argument("--no-clean", action="store_true", help="skip the clean-files check")
    parser.add_argument("--cache", metavar="DIR", help="keep the rendered photos here")
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))

    arrays = load_arrays(locate("mnist", args.data_dir, download=False))
    images, labels = arrays["test_images"], arrays["test_labels"].astype(np.int64)
    spec = SCORED if args.set == "scored" else TUNING
    start = time.perf_counter()
    photos = rendered_set(images, labels, spec, args.per_condition, args.cache)
    rendered = time.perf_counter() - start
    start = time.perf_counter()
    digits = [read_photo(p.jpeg) for p in photos]
    read = time.perf_counter() - start
    truth = np.array([p.label for p in photos])
    conditions = np.array([p.condition for p in photos])
    print(f"machine: {machine()}")
    print(
        f"{len(photos)} photos ({spec.name} set, seed {spec.seed}, test digits "
        f"{spec.first}-{spec.stop - 1}): rendered in {rendered:.0f} s, read in {read:.0f} s "
        f"({1000 * read / len(photos):.0f} ms each); {sum(d is None for d in digits)} refused "
        "as holding no digit"
    )
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    misread: dict[str, list[dict[str, Any]]] = {}
    clean: dict[str, dict[str, float]] = {}
    originals: dict[str, float] = {}
    if not args.no_clean:
        clean_digits = clean_files(images)
    for spec_name in args.models:
        model, _ = load_model(spec_name)
        guess = predictions(model, digits)
        right = guess == truth
        for c in CONDITIONS:
            mask = conditions == c
            if mask.any():
                rows[c][spec_name] = float(right[mask].mean())
                rows[c]["count"] = int(mask.sum())
        rows["all (mixed)"][spec_name] = float(right.mean())
        rows["all (mixed)"]["count"] = len(photos)
        same = [images[p.index].astype(np.float32) / 255.0 for p in photos]
        originals[spec_name] = float((predictions(model, same) == truth).mean())
        misread[spec_name] = [
            {"label": int(truth[i]), "read": int(guess[i]), **photos[i].params}
            for i in np.nonzero(~right)[0]
        ]
        if not args.no_clean:
            raw = predictions(model, [img.astype(np.float32) / 255.0 for img in images])
            files = predictions(model, clean_digits)
            clean[spec_name] = {
                "arrays": float((raw == labels).mean()),
                "files": float((files == labels).mean()),
                "agreement": float((raw == files).mean()),
            }
    print()
    print(table(dict(rows), args.models))
    print(
        f"\nthe same {len(photos)} digits as MNIST's own 28x28 arrays: "
        + ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in originals.items())
    )
    if clean:
        print("\nMNIST's 10,000 test digits: on the arrays, and as clean 28x28 PNG files read back")
        for name, figures in clean.items():
            print(
                f"  {name}: arrays {100 * figures['arrays']:.2f}%, files "
                f"{100 * figures['files']:.2f}%, same answer {100 * figures['agreement']:.2f}%"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "set": spec.name,
                    "accuracy": rows,
                    "clean": clean,
                    "originals": originals,
                    "misread": misread,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    sys.exit(main())
