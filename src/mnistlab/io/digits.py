"""One captioned grid of digits, drawn by PIL: TensorBoard's misclassified digits and the worst
mistakes in ``mnistlab eval --plot`` are both this picture.

Grayscale ``uint8``: TensorBoard's writer checksums every byte in pure Python, so bytes cost time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from mnistlab.config.schema import INPUT_SHAPE

LINE = 12
"""Pixels per caption line (PIL's default bitmap font is 11 high)."""


def digit_grid(
    images: np.ndarray,
    captions: Sequence[str],
    image_shape: tuple[int, int, int] = INPUT_SHAPE,
    cols: int = 8,
    scale: int = 2,
) -> np.ndarray:
    """An ``H x W`` uint8 grid of flat images in [0, 1] (``[N, C*H*W]``, shaped by
    ``image_shape``), each enlarged ``scale`` times under its caption (``\\n`` for more lines)."""
    from PIL import Image, ImageDraw

    c, h, w = image_shape
    lines = max((caption.count("\n") + 1 for caption in captions), default=1)
    tile_w, tile_h, caption = w * scale, h * scale, LINE * lines
    n = len(images)
    rows = max(1, math.ceil(n / cols))
    grid = Image.new("L", (cols * (tile_w + 2), rows * (tile_h + caption + 2)), 60)
    draw = ImageDraw.Draw(grid)
    for i in range(n):
        pixels = np.asarray(images[i], dtype=np.float32).reshape(c, h, w).mean(axis=0)
        digit = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
        tile = Image.fromarray(digit, mode="L").resize((tile_w, tile_h), Image.Resampling.NEAREST)
        x, y = (i % cols) * (tile_w + 2) + 1, (i // cols) * (tile_h + caption + 2) + 1
        grid.paste(tile, (x, y + caption))
        draw.multiline_text((x + 2, y), captions[i], fill=255, spacing=1)
    return np.asarray(grid)


def misclassified_grid(
    images: np.ndarray,
    labels: Iterable[object],
    predicted: Iterable[object],
    image_shape: tuple[int, int, int] = INPUT_SHAPE,
    cols: int = 8,
    scale: int = 2,
) -> np.ndarray:
    """Digits captioned ``"7 as 1"`` (true as predicted)."""
    captions = [f"{t} as {p}" for t, p in zip(labels, predicted, strict=True)]
    return digit_grid(images, captions, image_shape, cols=cols, scale=scale)
