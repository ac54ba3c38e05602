"""Reading the ink off a photographed sheet: the paper estimated locally, ruled lines removed.

A phone photo of a digit on paper is lit unevenly (a fall-off across the sheet, darker corners,
the phone's own shadow), and the paper may be ruled or squared. One paper level for the whole
picture turns a shadow into ink. Here the paper is estimated at every point, the picture is
divided by it, and what is left is the ink's darkness, 0 on paper and near 1 on black ink:

1. ``paper_level``: a grey-level *closing* (a maximum filter, then a minimum filter, of a window
   wider than any pen stroke) removes every dark mark narrower than the window and keeps the
   light as it is: a closing gives back any brightness that only rises or falls across the
   window, so gradients, vignettes and the edge of a cast shadow stay paper. It runs on a
   reduced copy (the light changes slowly), which also averages the sensor noise away.
2. ``remove_rules``: ruled and squared lines survive as thin dark lines running across the whole
   sheet. Their angle is found from the projection that makes the row (or column) profile
   sharpest, and each line's own darkness, a low quantile along it (the digit crosses a line
   over a small part of its length), is divided out the way a darker paper would be.

Pure functions on numpy arrays; no model, no printing.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

COARSE_SIDE = 160
"""The paper is estimated on a copy whose longer side is at most this many pixels."""
WINDOW = 0.3
"""The closing's window, as a fraction of the picture's shorter side: wider than the boldest
stroke of a digit that fills the picture (MNIST's own 28x28 files have strokes of up to 5 of 28
pixels), so no stroke is taken for paper."""
ANGLE_SIDE = 256
MAX_RULE_ANGLE = 8.0
"""Ruled lines are looked for up to this many degrees off horizontal (or vertical)."""


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (2-D float) at ``size`` (width, height): area averaging when shrinking,
    bilinear when growing."""
    width, height = size
    shrink = width < image.shape[1] or height < image.shape[0]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    out = Image.fromarray(image.astype(np.float32, copy=False), mode="F").resize(size, method)
    return np.asarray(out, dtype=np.float32)


def _closing(image: np.ndarray, size: int) -> np.ndarray:
    """A grey-level closing: the ``size`` x ``size`` maximum filter, then the minimum filter
    (each as two 1-D passes). Beyond the picture's edges the brightness goes on the way it runs
    at the edge (an odd reflection of a lightly smoothed copy): a closing keeps a brightness
    that keeps rising or falling, but a flat copy of the edge would flatten the light's fall
    into a corner and turn the dark edge into ink."""
    pad = size // 2
    smooth = box_blur(image, max(3, (size // 4) | 1))
    out = np.pad(smooth, 2 * pad, mode="reflect", reflect_type="odd")
    out[2 * pad : 2 * pad + image.shape[0], 2 * pad : 2 * pad + image.shape[1]] = image
    for reduce in (np.maximum, np.minimum):
        out = _window(reduce, _window(reduce, out, size, axis=1), size, axis=0)
    return out


def _window(reduce: np.ufunc, image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """``reduce`` (``np.maximum`` or ``np.minimum``) over every ``size`` consecutive values along
    ``axis`` (the result ``size - 1`` shorter there), by doubling: windows of 1, 2, 4, ... values
    combined, about log2(size) passes over the picture instead of ``size``. Exact: a maximum or
    minimum of the same values, however they are grouped."""
    n = image.shape[axis]
    out_len = n - size + 1

    def part(a: np.ndarray, start: int, length: int) -> np.ndarray:
        index: list[slice] = [slice(None)] * a.ndim
        index[axis] = slice(start, start + length)
        return a[tuple(index)]

    span, block = 1, image  # block[i]: the reduction of values i ... i + span - 1
    result: np.ndarray | None = None
    covered = 0  # the result holds values i ... i + covered - 1
    remaining = size
    while remaining:
        if remaining & span:
            piece = part(block, covered, out_len)
            result = piece if result is None else reduce(result, piece)
            covered += span
            remaining -= span
        if remaining:
            half = block.shape[axis] - span
            block = reduce(part(block, 0, half), part(block, span, half))
            span *= 2
    assert result is not None
    return result


def box_blur(image: np.ndarray, size: int) -> np.ndarray:
    """The mean over a ``size`` x ``size`` window (odd ``size``; edges replicate), by running
    sums."""
    if size <= 1:
        return image
    pad = size // 2
    out = np.pad(image.astype(np.float64), pad, mode="edge")
    for axis in (0, 1):
        sums = np.cumsum(out, axis=axis)
        sums = np.concatenate([np.zeros_like(sums.take([0], axis=axis)), sums], axis=axis)
        n = out.shape[axis]
        out = (
            sums.take(range(size, n + 1), axis=axis) - sums.take(range(0, n + 1 - size), axis=axis)
        ) / size
    return out.astype(np.float32)


def paper_level(grey: np.ndarray) -> np.ndarray:
    """The brightness of the paper at every pixel of ``grey`` (dark ink on light paper, 2-D in
    [0, 1]), with every mark narrower than ``WINDOW`` of the picture removed."""
    height, width = grey.shape
    scale = min(1.0, COARSE_SIDE / max(height, width))
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = resize(grey, small_size) if scale < 1.0 else grey.astype(np.float32)
    small = box_blur(small, 3) if min(small.shape) >= 9 else small
    window = max(3, round(WINDOW * min(small.shape)) | 1)
    closed = _closing(small, window)
    closed = box_blur(closed, 3) if min(closed.shape) >= 9 else closed
    level = resize(closed, (width, height)) if scale < 1.0 else closed
    return np.maximum(level, 1e-3)


# -- ruled and squared paper -------------------------------------------------------------------
def _profiles(ink: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """For each angle (degrees), the mean ink along each line of that slope: row ``r`` of the
    result at angle ``a`` is the mean of ``ink`` along ``y = r + x * tan(a)`` (nearest pixel).

    Only the inked pixels are summed (a zero adds nothing, so the sums are the same to the bit,
    in the same order), and how many pixels each line holds is counted from the slope alone: a
    drawing on a clean canvas, mostly paper, costs a tenth of the work."""
    height, width = ink.shape
    xs = np.arange(width, dtype=np.float32)
    reach = int(math.ceil(width * math.tan(math.radians(float(np.abs(angles).max()))))) + 1
    rows = height + 2 * reach
    out = np.zeros((len(angles), rows), dtype=np.float32)
    ys_ink, xs_ink = np.nonzero(ink)
    weights = ink[ys_ink, xs_ink]
    for i, angle in enumerate(angles):
        shift = np.rint(xs * math.tan(math.radians(float(angle)))).astype(np.int64)
        sums = np.bincount(ys_ink - shift[xs_ink] + reach, weights=weights, minlength=rows)
        # the column x puts its pixels on lines reach - shift[x] ... reach - shift[x] + height - 1
        starts = np.bincount(reach - shift, minlength=rows + 1)
        ends = np.bincount(reach - shift + height, minlength=rows + 1)
        counts = np.cumsum(starts - ends)[:rows]
        out[i] = sums / np.maximum(counts, 1)
    return out


def _sharpness(profiles: np.ndarray) -> np.ndarray:
    """How strongly each profile is made of narrow peaks: the energy left after subtracting its
    own moving average (lines are narrow; a digit's and the light's profiles are broad)."""
    width = 9
    kernel = np.ones(width, dtype=np.float32) / width
    smooth = np.stack([np.convolve(p, kernel, mode="same") for p in profiles])
    return ((profiles - smooth) ** 2).sum(axis=1)


def _rule_angle(ink: np.ndarray) -> float:
    """The slope (degrees) of the lines running across ``ink`` from left to right, found coarse
    to fine on a copy at most ``ANGLE_SIDE`` pixels wide (area-averaged, so thin lines stay)."""
    scale = min(1.0, ANGLE_SIDE / max(ink.shape))
    small = ink
    if scale < 1.0:
        small = resize(ink, (round(ink.shape[1] * scale), round(ink.shape[0] * scale)))
    coarse = np.arange(-MAX_RULE_ANGLE, MAX_RULE_ANGLE + 1e-6, 0.5)
    best = float(coarse[int(np.argmax(_sharpness(_profiles(small, coarse))))])
    fine = np.arange(best - 0.4, best + 0.4 + 1e-6, 0.1)
    return float(fine[int(np.argmax(_sharpness(_profiles(small, fine))))])


def _remove_lines(ink: np.ndarray, quantile: float) -> np.ndarray:
    """``ink`` with its lines from left to right (at any slope up to ``MAX_RULE_ANGLE``) divided
    out: each line's darkness is the ``quantile`` of the ink along it, over the picture's width."""
    height, width = ink.shape
    angle = _rule_angle(ink)
    shift = np.rint(np.arange(width) * math.tan(math.radians(angle))).astype(np.int64)
    reach = int(np.abs(shift).max()) + 1
    rows = np.arange(height)[:, None] - shift[None, :] + reach  # the line each pixel is on
    span = height + 2 * reach
    sheared = np.full((span, width), np.inf, dtype=np.float32)
    sheared[rows, np.arange(width)[None, :]] = ink
    counts = np.isfinite(sheared).sum(axis=1)
    ordered = np.sort(sheared, axis=1)  # the missing (inf) last
    pick = np.clip(np.floor(quantile * (counts - 1)), 0, width - 1).astype(np.int64)
    level = np.take_along_axis(ordered, pick[:, None], axis=1)[:, 0]
    level = np.where(counts >= width // 3, level, 0.0)  # a corner's few pixels say nothing
    # a line two pixels wide falls on one sheared row here and the next there: take the
    # darker of each row and its neighbours
    level = np.maximum(level, np.maximum(np.roll(level, 1), np.roll(level, -1)))
    line = np.clip(level[rows], 0.0, 0.95).astype(np.float32)
    return np.clip((ink - line) / (1.0 - line), 0.0, 1.0)


def remove_rules(ink: np.ndarray, quantile: float = 0.25) -> np.ndarray:
    """``ink`` (darkness, 0 on paper) without the ruled lines of lined or squared paper: the
    lines across the sheet, then the lines down it. Plain paper comes back nearly unchanged
    (its lines' darkness is the paper's: about zero)."""
    if min(ink.shape) < 32:
        return ink
    across = _remove_lines(ink, quantile)
    return _remove_lines(across.T, quantile).T.copy()
