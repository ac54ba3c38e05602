"""Phone photographs of handwritten digits on paper, rendered from MNIST's test digits.

A photo of a digit a learner wrote is not a clean scan: the light falls off across the sheet and
into the corners, the paper is ruled or squared, the pen is blue or the digit is in pencil, the
sheet is a little rotated, the phone blurs and compresses. ``render`` draws one MNIST digit that
way and returns the JPEG a phone would save; ``photo_set`` draws a reproducible set of them.

The rendering parameters below were fixed before mnistlab's photo preprocessing was tuned, and
they are not tuned on the images that are scored: the scored set (``SCORED``) and the set used to
tune (``TUNING``) come from different test digits and different seeds.

Each image has one named condition (``CONDITIONS``) laid over a mild baseline every photo has
(tinted paper with grain, a slight fall-off of light, a small rotation, a little blur, sensor
noise, JPEG). ``everything`` lays all the conditions on one sheet.

Run ``python benchmarks/photo_gen.py --out DIR`` to write a few of each condition as files.
"""

from __future__ import annotations

import argparse
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

CONDITIONS: tuple[str, ...] = (
    "plain",
    "shadow",
    "lined",
    "squared",
    "coloured-ink",
    "pencil",
    "rotated-blurred",
    "everything",
)
SIZES: tuple[tuple[int, int], ...] = (
    (640, 480),
    (800, 600),
    (1024, 768),
    (1280, 960),
    (1600, 1200),
    (1920, 1080),
    (2016, 1512),
)
"""(width, height) of the photo, landscape; half are turned to portrait."""

INKS: dict[str, tuple[tuple[float, float], ...]] = {
    # (low, high) of each RGB channel, 0-255
    "black": ((10, 50), (10, 50), (15, 60)),
    "blue": ((15, 60), (30, 90), (110, 200)),
    "red": ((160, 215), (15, 55), (25, 70)),
    "green": ((15, 60), (95, 150), (40, 90)),
    "purple": ((70, 120), (25, 60), (110, 170)),
}
RULE_INKS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((130, 185), (165, 205), (205, 240)),  # light blue
    ((150, 195), (150, 195), (150, 195)),  # grey
    ((185, 225), (140, 185), (150, 190)),  # pink-red (a margin-like colour)
)


@dataclass(frozen=True)
class SetSpec:
    """A reproducible photo set: which test digits it draws from, its seed, its size."""

    name: str
    seed: int
    first: int
    """Digits are drawn from MNIST's test file indices ``first <= i < stop``."""
    stop: int
    per_condition: int


SCORED = SetSpec("scored", seed=190_001, first=0, stop=5_000, per_condition=100)
"""The held-out set the figures in docs/photos.md are measured on (800 photos)."""
TUNING = SetSpec("tuning", seed=190_002, first=5_000, stop=10_000, per_condition=40)
"""The set the preprocessing was tuned on: other digits, another seed (320 photos)."""


@dataclass(frozen=True)
class Photo:
    jpeg: bytes
    condition: str
    label: int
    index: int
    """The digit's index in MNIST's test file."""
    params: dict[str, Any]
    """What was drawn (size, ink, paper, light, ...), for looking into a misread photo."""


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _colour(rng: np.random.Generator, ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    return np.array([_uniform(rng, lo, hi) for lo, hi in ranges], dtype=np.float32) / 255.0


def _rules(
    shape: tuple[int, int], angle: float, spacing: float, width: float, phase: float
) -> np.ndarray:
    """Coverage (0..1) of parallel lines ``spacing`` apart, ``width`` thick, turned ``angle``
    degrees from horizontal, anti-aliased."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = math.radians(angle)
    v = ys * math.cos(t) - xs * math.sin(t) - phase
    d = np.abs((v + spacing / 2) % spacing - spacing / 2)
    return np.clip(width / 2 + 0.5 - d, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Low-frequency noise in about -1..1: random values on a coarse grid, smoothly enlarged."""
    h, w = shape
    coarse = rng.standard_normal((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def _ink_layer(
    digit: np.ndarray,
    shape: tuple[int, int],
    *,
    height: float,
    angle: float,
    centre: tuple[float, float],
    threshold: float,
) -> np.ndarray:
    """The digit's ink coverage on the sheet: enlarged so its 20-pixel box is ``height`` pixels,
    turned ``angle`` degrees, its box centred at ``centre`` (x, y), with the soft edges of the
    enlarged MNIST digit sharpened into a pen's stroke (``threshold``: lower is a bolder pen)."""
    h, w = shape
    side = max(8, round(28 * height / 20))
    big = Image.fromarray(digit.astype(np.uint8), mode="L").resize(
        (side, side), Image.Resampling.BICUBIC
    )
    big = big.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=0)
    a = np.asarray(big, dtype=np.float32) / 255.0
    lo, hi = threshold - 0.18, threshold + 0.18
    a = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    a = a * a * (3 - 2 * a)  # smoothstep: a pen's edge is sharp but not aliased
    canvas = np.zeros(shape, dtype=np.float32)
    top = round(centre[1] - a.shape[0] / 2)
    left = round(centre[0] - a.shape[1] / 2)
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(h, top + a.shape[0]), min(w, left + a.shape[1])
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = a[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


def _light(
    rng: np.random.Generator, shape: tuple[int, int], *, strong: bool, params: dict[str, Any]
) -> np.ndarray:
    """Illumination over the sheet (multiplies the paper): a fall-off in one direction, a
    vignette, and under ``strong`` a soft-edged shadow (the phone's or a hand's) on part of it."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ys, xs = (ys - h / 2) / max(h, w), (xs - w / 2) / max(h, w)
    direction = _uniform(rng, 0, 2 * math.pi)
    along = xs * math.cos(direction) + ys * math.sin(direction)  # about -0.5..0.5
    along = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)  # 0..1
    fall = _uniform(rng, 0.35, 0.65) if strong else _uniform(rng, 0.0, 0.12)
    gamma = _uniform(rng, 0.7, 2.0)
    light = 1.0 - fall * along**gamma
    vignette = _uniform(rng, 0.2, 0.45) if strong else _uniform(rng, 0.0, 0.12)
    r2 = (xs**2 + ys**2) / 0.5
    light *= 1.0 - vignette * r2
    params.update(light_fall=round(fall, 3), vignette=round(vignette, 3))
    if strong and rng.random() < 0.5:
        edge_angle = _uniform(rng, 0, 2 * math.pi)
        offset = _uniform(rng, -0.35, 0.1)
        soft = _uniform(rng, 0.02, 0.12)
        depth = _uniform(rng, 0.25, 0.45)
        s = xs * math.cos(edge_angle) + ys * math.sin(edge_angle) - offset
        light *= 1.0 - depth * np.clip(0.5 + s / (2 * soft), 0.0, 1.0)
        params.update(cast_shadow=round(depth, 3))
    return np.clip(light, 0.05, 1.2).astype(np.float32)


def render(digit: np.ndarray, condition: str, seed: int | tuple[int, ...]) -> tuple[bytes, dict]:
    """One digit (28x28 uint8, MNIST's white ink on black) photographed under ``condition``:
    the JPEG bytes and the parameters drawn. The same digit, condition and seed give the same
    bytes."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
    rng = np.random.default_rng(seed)
    every = condition == "everything"
    width, height = SIZES[int(rng.integers(len(SIZES)))]
    if rng.random() < 0.5:
        width, height = height, width
    shape = (height, width)
    short = min(width, height)
    params: dict[str, Any] = {"condition": condition, "size": f"{width}x{height}"}

    # paper, turned a little on the photo
    sheet_angle = _uniform(rng, -4, 4)
    white, warm = _uniform(rng, 0.82, 0.97), _uniform(rng, 0.0, 0.08)
    paper = np.array([white, white - warm / 3, white - warm], dtype=np.float32)
    img = np.broadcast_to(paper, (*shape, 3)).copy()

    digit_h = _uniform(rng, 0.15, 0.5) * short
    params.update(digit_height=round(digit_h), sheet_angle=round(sheet_angle, 2))
    pattern = "plain"
    if condition in ("lined", "squared"):
        pattern = condition
    elif every:
        pattern = "lined" if rng.random() < 0.5 else "squared"
    if pattern != "plain":
        rule = _colour(rng, RULE_INKS[int(rng.integers(len(RULE_INKS)))])
        thick = _uniform(rng, 1.0, 3.0) * short / 800
        if pattern == "lined":
            spacing = digit_h * _uniform(rng, 0.85, 1.4)
            cover = _rules(shape, sheet_angle, spacing, thick, _uniform(rng, 0, spacing))
            if rng.random() < 0.3:  # the red margin line
                margin = _rules(shape, sheet_angle + 90, width * 4, thick * 1.5, 0)
                margin = np.roll(margin, int(rng.integers(width // 12, width // 4)), axis=1)
                red = np.array([0.85, 0.35, 0.4], dtype=np.float32)
                img = img * (1 - margin[..., None]) + red * paper * margin[..., None]
        else:
            spacing = digit_h * _uniform(rng, 0.3, 0.55)
            cover = np.maximum(
                _rules(shape, sheet_angle, spacing, thick, _uniform(rng, 0, spacing)),
                _rules(shape, sheet_angle + 90, spacing, thick, _uniform(rng, 0, spacing)),
            )
        cover *= _uniform(rng, 0.55, 1.0)
        img = img * (1 - cover[..., None]) + (rule * paper) * cover[..., None]
        params.update(pattern=pattern, rule_spacing=round(spacing, 1))

    # the digit
    tilt = (
        _uniform(rng, -12, 12) if condition == "rotated-blurred" or every else _uniform(rng, -4, 4)
    )
    centre = (
        width / 2 + _uniform(rng, -0.18, 0.18) * width,
        height / 2 + _uniform(rng, -0.18, 0.18) * height,
    )
    ink = _ink_layer(
        digit,
        shape,
        height=digit_h,
        angle=sheet_angle + tilt,
        centre=centre,
        threshold=_uniform(rng, 0.3, 0.7),
    )
    kind = "black"
    if condition == "coloured-ink" or (every and rng.random() < 0.6):
        kind = ("blue", "red", "green", "purple")[int(rng.integers(4))]
    pencil = condition == "pencil" or (every and kind == "black")
    if pencil:
        contrast = _uniform(rng, 0.22, 0.45)
        graphite = np.full(3, 1.0 - contrast, dtype=np.float32) * paper
        grain = 1.0 - 0.5 * np.clip(rng.standard_normal(shape).astype(np.float32) * 0.5, 0, 1)
        ink = ink * grain
        pen = graphite
        kind = "pencil"
        params.update(pencil_contrast=round(contrast, 3))
    else:
        pen = _colour(rng, INKS[kind])
    ink *= _uniform(rng, 0.85, 1.0)
    img = img * (1 - ink[..., None]) + pen * ink[..., None]
    params.update(ink=kind, tilt=round(tilt, 2))

    # paper grain: fine fibres and coarse blotches
    grain_level = _uniform(rng, 0.015, 0.04) if pencil else _uniform(rng, 0.005, 0.025)
    fine = rng.standard_normal(shape).astype(np.float32) * grain_level
    blotch = _smooth_noise(rng, shape, max(8, short // 12)) * _uniform(rng, 0.003, 0.012)
    img *= (1.0 + fine + blotch)[..., None]

    # light
    strong = condition == "shadow" or every
    img *= _light(rng, shape, strong=strong, params=params)[..., None]
    cast = np.array([_uniform(rng, 0.96, 1.03) for _ in range(3)], dtype=np.float32)
    img *= cast * _uniform(rng, 0.85, 1.08)

    # the camera: blur, noise, JPEG
    blurred = condition == "rotated-blurred" or every
    sigma = (_uniform(rng, 1.2, 3.2) if blurred else _uniform(rng, 0.2, 0.9)) * short / 800
    noise = _uniform(rng, 0.004, 0.02)
    img += rng.standard_normal(img.shape).astype(np.float32) * noise
    pixels = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8), "RGB")
    pixels = pixels.filter(ImageFilter.GaussianBlur(sigma))
    quality = int(rng.integers(30, 61)) if blurred else int(rng.integers(65, 96))
    out = io.BytesIO()
    pixels.save(out, format="JPEG", quality=quality)
    params.update(blur=round(sigma, 2), noise=round(noise, 4), jpeg_quality=quality)
    return out.getvalue(), params


def photo_set(
    images: np.ndarray,
    labels: np.ndarray,
    spec: SetSpec,
    *,
    per_condition: int | None = None,
    conditions: tuple[str, ...] = CONDITIONS,
) -> list[Photo]:
    """``spec``'s photos (``per_condition`` of each condition, default the spec's) from MNIST's
    test digits ``images`` (N x 28 x 28 uint8 or float in [0, 1]) and ``labels``. The digits
    are drawn without repeats from ``spec.first..spec.stop``; the same arguments give the same
    photos (a smaller ``per_condition`` gives the start of the larger set's draw)."""
    count = spec.per_condition if per_condition is None else per_condition
    if images.dtype != np.uint8:
        images = (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    images = images.reshape(-1, 28, 28)
    stop = min(spec.stop, len(images))
    total = len(CONDITIONS) * spec.per_condition
    order = np.random.default_rng(spec.seed).permutation(np.arange(spec.first, stop))
    if len(order) < total:
        raise ValueError(f"{spec.name}: needs {total} digits, has {len(order)}")
    photos = []
    for c, condition in enumerate(CONDITIONS):
        if condition not in conditions:
            continue
        for k in range(count):
            slot = c * spec.per_condition + k
            index = int(order[slot])
            jpeg, params = render(images[index], condition, (spec.seed, slot))
            photos.append(Photo(jpeg, condition, int(labels[index]), index, params))
    return photos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="full MNIST (default ../shared/data/mnist)")
    parser.add_argument("--out", required=True, help="folder to write the photos into")
    parser.add_argument("--per-condition", type=int, default=3)
    parser.add_argument("--set", choices=("tuning", "scored"), default="tuning")
    args = parser.parse_args()
    from common import SHARED_MNIST
    from mnistlab.data import load_arrays, locate

    arrays = load_arrays(locate("mnist", args.data_dir or SHARED_MNIST, download=False))
    spec = TUNING if args.set == "tuning" else SCORED
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for p in photo_set(
        arrays["test_images"], arrays["test_labels"], spec, per_condition=args.per_condition
    ):
        name = out / f"{p.condition}-{p.index:05d}-label{p.label}.jpg"
        name.write_bytes(p.jpeg)
        print(name, p.params)


if __name__ == "__main__":
    main()
