"""Turn a real image file into an MNIST digit, the way MNIST itself was made.

LeCun et al. size-normalised each NIST digit to fit a 20x20 box (keeping its aspect ratio,
anti-aliased to grey levels) and placed it in a 28x28 field so that its centre of mass sits at the
centre (index 14, 14 — measured on the bundled digits). ``preprocess`` does the same to a photo
or a scan: grey, light ink on a dark ground (inverting dark-on-light paper), paper level and
noise removed, cropped to the ink, fitted into 20x20, centred by mass, scaled to [0, 1].

Pure functions on numpy arrays and PIL images; no model, no printing.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnistlab.config.schema import INPUT_SHAPE
from mnistlab.errors import ImageError, NoDigitError

SIDE = INPUT_SHAPE[1]
BOX = 20
CENTRE = 14.0
"""Where MNIST puts a digit's centre of mass (row and column index; mean of the test digits)."""
MAX_PIXELS = 40_000_000
"""Refuse larger images before decoding them: a tiny file can claim to be 20000x20000 (a
decompression bomb) and take gigabytes of memory. 40 megapixels covers any camera photo."""
NOISE_FLOOR = 0.15
"""Ink below this (after the paper level is removed) is paper texture or JPEG noise."""


def _require_regular_file(path: Path) -> None:
    """Only regular files are read: opening a FIFO blocks until a writer comes, and a device can
    stream forever; both are refused before anything opens them."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path}: is a folder, not an image")
    if not stat.S_ISREG(mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "not a regular file"
        raise ImageError(f"{path}: is {kind}; predict reads regular image files only")


def load_image(path: str | Path) -> np.ndarray:
    """A grey float32 array in [0, 1] (any PIL format, mode and size), or one clear ``ImageError``."""
    path = Path(path)
    _require_regular_file(path)
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (give a PNG, JPEG, BMP, GIF or TIFF file)")
    return decode_image(path, where=str(path))


def decode_image(
    source: str | Path | IO[bytes], *, where: str, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Grey levels in [0, 1] from an image file or a binary stream (``where`` names it in
    messages). The pixel count in the header is checked before anything is decoded; anything
    wrong is one ``ImageError``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.width * img.height > max_pixels:
                    raise ImageError(
                        f"{where}: image of {img.width}x{img.height} pixels is too large "
                        f"(more than {max_pixels:,}); scale it down first"
                    )
                img.load()
                return to_grey(ImageOps.exif_transpose(img) or img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{where}: refused as too large: it claims so many pixels it could be a "
            "decompression bomb; scale it down first"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{where}: not an image (give a PNG, JPEG, BMP, GIF or TIFF file)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{where}: damaged or truncated image ({exc})") from None


def to_grey(img: Image.Image) -> np.ndarray:
    """Grey levels in [0, 1]. Transparent areas become paper of the colour that contrasts with
    the opaque strokes (black strokes on a transparent ground, or white ones, both work)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float32)
        low, high = float(arr.min()), float(arr.max())
        return (arr - low) / (high - low) if high > low else np.zeros_like(arr)
    if "A" in img.getbands():
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        grey = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32) / 255.0
        if alpha.min() < 1.0:
            weight = float(alpha.sum())
            ink = float((grey * alpha).sum() / weight) if weight > 0 else 0.0
            paper = 1.0 if ink < 0.5 else 0.0
            grey = alpha * grey + (1.0 - alpha) * paper
        return grey
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _border(grey: np.ndarray) -> np.ndarray:
    width = max(1, min(grey.shape) // 20)
    return np.concatenate(
        [
            grey[:width].ravel(),
            grey[-width:].ravel(),
            grey[:, :width].ravel(),
            grey[:, -width:].ravel(),
        ]
    )


def _resize(ink: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area averaging when shrinking (MNIST's anti-aliasing), bilinear when growing."""
    width, height = size
    shrink = width < ink.shape[1] or height < ink.shape[0]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    out = Image.fromarray(ink.astype(np.float32), mode="F").resize(size, method)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def preprocess(grey: np.ndarray, *, where: str = "image") -> np.ndarray:
    """A 28x28 float32 MNIST-style digit (light ink on black, in [0, 1]) from a grey image."""
    if grey.ndim != 2 or grey.size == 0:
        raise ImageError(f"{where}: expected a 2-D grey image, got shape {grey.shape}")
    paper = float(np.median(_border(grey)))
    if paper > 0.5:  # dark ink on light paper: MNIST is light ink on black
        grey, paper = 1.0 - grey, 1.0 - paper
    contrast = float(grey.max()) - paper
    if contrast < 0.1:
        raise NoDigitError(
            f"{where}: no digit found (the image is blank or has almost no contrast)"
        )
    ink = np.clip((grey - paper) / contrast, 0.0, 1.0)
    ink[ink < NOISE_FLOOR] = 0.0
    rows, cols = np.nonzero(ink)
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = ink.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = _resize(ink, size)
    total = float(digit.sum())
    if total <= 0:
        raise NoDigitError(f"{where}: no digit found (the ink vanished when scaled to 20x20)")
    ys, xs = np.indices(digit.shape)
    com_y, com_x = float((digit * ys).sum()) / total, float((digit * xs).sum()) / total
    top = min(max(round(CENTRE - com_y), 0), SIDE - digit.shape[0])
    left = min(max(round(CENTRE - com_x), 0), SIDE - digit.shape[1])
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return canvas / float(canvas.max())


def image_to_digit(path: str | Path) -> np.ndarray:
    """``load_image`` then ``preprocess``: a 28x28 digit ready for the model (flatten it)."""
    return preprocess(load_image(path), where=str(path))
