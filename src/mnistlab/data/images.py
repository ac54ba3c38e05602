"""Turn a real image file into an MNIST digit, the way MNIST itself was made.

LeCun et al. size-normalised each NIST digit to fit a 20x20 box (keeping its aspect ratio,
anti-aliased to grey levels) and placed it in a 28x28 field so that its centre of mass sits at the
centre (index 14, 14 — measured on the bundled digits). ``preprocess`` does the same to a phone
photo, a scan or a drawing:

1. grey levels that keep the ink's contrast (``to_grey``: coloured ink too), at most
   ``WORK_SIDE`` pixels across;
2. which is ink, the dark or the light (``_dark_ink``);
3. the paper estimated at every point and divided out, so uneven light and shadows stay paper,
   and ruled or squared lines removed (``data/paper.py``);
4. the paper's noise floor removed, the ink scaled to [0, 1];
5. the digit found among the marks, specks dropped, and ``NoDigitError`` where there is none, or
   only something too small or too faint to be one (``data/marks.py``);
6. MNIST's recipe (``fit_digit``): cropped to the ink, fitted into 20x20, centred by mass in
   28x28.

Anything that cannot be read as an image is one ``ImageError``. Pure functions on numpy arrays
and PIL images; no model, no printing. (numpy, not torch: these are many small operations, and
torch's thread pool makes each of them wait for cores that training may be using.)
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from mnistlab.config.schema import INPUT_SHAPE
from mnistlab.data.marks import select_digit
from mnistlab.data.paper import paper_level, remove_rules, resize
from mnistlab.errors import ImageError, NoDigitError

SIDE = INPUT_SHAPE[1]
BOX = 20
CENTRE = 14.0
"""Where MNIST puts a digit's centre of mass (row and column index; mean of the test digits)."""
MAX_PIXELS = 40_000_000
"""Refuse larger images before decoding them: a tiny file can claim to be 20000x20000 (a
decompression bomb) and take gigabytes of memory. 40 megapixels covers any camera photo."""
WORK_SIDE = 640
"""Pictures are read at most this many pixels on their longer side (area-averaged down): a
digit that fills a tenth of a phone photo still spans some 50 pixels, and grain averages out."""
MIN_SIDE = 8
"""A picture narrower than this holds no digit."""
NOISE_SIGMAS = 4.0
MIN_FLOOR = 0.03
"""Ink below the paper's noise (``NOISE_SIGMAS`` standard deviations of the ink map over the
paper, at least ``MIN_FLOOR``) is grain, JPEG noise or a faint shadow, not ink."""
DARKEST_PAPER = 0.2
"""Ink is measured against paper at least this bright, as a share of the sheet's lit parts."""
LIGHT_INK_TAIL = 0.15
"""Light ink is read where what is darker than the ground reaches less than this fraction of
what is lighter (``_dark_ink``)."""
MIN_CONTRAST = 0.08
"""The darkest ink must stand this far above that floor (on a 0-1 scale) to be a digit."""


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
    except MemoryError:
        raise ImageError(f"{where}: too large to decode in the memory there is") from None
    except Exception as exc:  # a crafted file can trip any decoder: still one line, not a crash
        raise ImageError(
            f"{where}: damaged image (the decoder failed: {type(exc).__name__})"
        ) from None


def _nominal(arr: np.ndarray, top: float) -> np.ndarray:
    """An integer or float picture scaled into [0, 1]; NaN or infinite pixels (a float TIFF can
    hold them) become the picture's median, so one bad pixel does not blank the rest."""
    arr = arr.astype(np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, float(np.median(arr[finite])) if finite.any() else 0.0)
    low, high = float(arr.min()), float(arr.max())
    if low >= 0.0 and high <= top:
        return arr / top
    return (arr - low) / (high - low) if high > low else np.zeros_like(arr)


def to_grey(img: Image.Image) -> np.ndarray:
    """Grey levels in [0, 1], chosen so ink stands out from paper.

    A colour picture gives each pixel's darkest channel: ink of any colour (blue, red, green) is
    dark in at least one channel, while white or tinted paper is light in all three, so coloured
    ink keeps its contrast where plain luminance would halve it. 16-bit and float pictures are
    scaled by their range; palette pictures are expanded. Transparent areas become paper of the
    colour that contrasts with the opaque strokes (black strokes on a transparent ground, or
    white ones, both work). A multi-frame file (an animated GIF, a multi-page TIFF) is read at
    its first frame."""
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return _nominal(np.asarray(img), 65535.0)
    if img.mode == "F":
        return _nominal(np.asarray(img), 1.0)
    if img.mode not in ("1", "L", "LA", "RGB", "RGBA"):
        # premultiplied alpha (La, RGBa) converts to straight alpha only; the rest to RGB(A)
        target = {"La": "LA", "RGBa": "RGBA"}.get(img.mode)
        target = target or ("RGBA" if "A" in img.getbands() else "RGB")
        try:
            img = img.convert(target)
        except (ValueError, OSError) as exc:
            raise ImageError(f"cannot read an image of mode {img.mode!r} ({exc})") from None
    if "A" in img.getbands():
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3]
        grey = rgba[..., :3].min(axis=2)
        if alpha.min() < 1.0:
            weight = float(alpha.sum())
            ink = float((grey * alpha).sum() / weight) if weight > 0 else 0.0
            paper = 1.0 if ink < 0.5 else 0.0
            grey = alpha * grey + (1.0 - alpha) * paper
        return grey
    if img.mode == "RGB":
        red, green, blue = img.split()
        darkest = ImageChops.darker(ImageChops.darker(red, green), blue)
        return np.asarray(darkest, dtype=np.float32) / 255.0
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _size(image: np.ndarray, scale: float) -> tuple[int, int]:
    """(width, height) of ``image`` scaled by ``scale`` (at least one pixel)."""
    return max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))


def _dark_ink(grey: np.ndarray) -> bool:
    """Whether the ink is darker than the paper. The ground is taken as the median of each block
    of half the picture's shorter side (the marks are a small part of it; the light changes
    across the picture, so one level for all would not do), and the marks are what stands out
    from it. Dark ink is the
    rule (paper); light ink on a dark ground (MNIST's own files, chalk, a drawing in white) is
    taken only where the marks are bright and almost nothing is darker than the ground."""
    scale = min(1.0, 96 / max(grey.shape))
    small = grey if scale == 1.0 else resize(grey, _size(grey, scale))
    height, width = small.shape
    block = max(1, min(height, width) // 2)
    rows, cols = height // block, width // block
    cut = small[: rows * block, : cols * block].reshape(rows, block, cols, block)
    ground = np.median(cut.transpose(0, 2, 1, 3).reshape(rows, cols, -1), axis=2)
    local = small - resize(ground.astype(np.float32), (width, height))
    low, high = np.quantile(local, [0.005, 0.995])
    return bool(-low >= LIGHT_INK_TAIL * high)


def _ink(grey: np.ndarray, where: str) -> np.ndarray:
    """The ink of a picture of a digit (darkness over the local paper, 0 to 1), with the paper's
    noise and grain below ``floor`` removed, scaled so the darkest ink is 1."""
    if not _dark_ink(grey):
        grey = 1.0 - grey
    paper = paper_level(grey)
    # ink is how much darker than its paper a pixel is, as a share of that paper's brightness
    # (a shadow dims ink and paper alike), but never of a paper darker than a fifth of the
    # sheet's bright parts: near black, the share would be noise
    lit = float(np.quantile(paper, 0.95))
    ink = np.clip((paper - grey) / np.maximum(paper, DARKEST_PAPER * lit), 0.0, 1.0)
    ink = remove_rules(ink)
    middle = float(np.median(ink))
    sigma = 1.4826 * float(np.median(np.abs(ink - middle)))
    floor = middle + max(NOISE_SIGMAS * sigma, MIN_FLOOR)
    peak = float((resize(ink, _size(ink, 0.5)) if min(ink.shape) >= 16 else ink).max())
    if peak - floor < MIN_CONTRAST:
        raise NoDigitError(
            f"{where}: no digit found (the image is blank, or its marks are too faint to be a "
            "digit)"
        )
    return np.clip((ink - floor) / (peak - floor), 0.0, 1.0)


def preprocess(grey: np.ndarray, *, where: str = "image") -> np.ndarray:
    """A 28x28 float32 MNIST-style digit (light ink on black, in [0, 1]) from a grey picture of
    a digit of any size, dark ink on light paper or light on dark: the paper estimated locally
    and divided out, ruled lines removed, the digit found among the marks, then MNIST's recipe
    (crop, fit 20x20, centre by mass). ``NoDigitError`` where there is no digit: blank, too
    faint, or too small to be one."""
    if grey.ndim != 2 or grey.size == 0:
        raise ImageError(f"{where}: expected a 2-D grey image, got shape {grey.shape}")
    grey = _nominal(np.asarray(grey), 1.0)
    height, width = grey.shape
    if min(height, width) < MIN_SIDE:
        raise NoDigitError(
            f"{where}: no digit found: a {width}x{height} image is too small to hold one"
        )
    scale = min(1.0, WORK_SIDE / max(height, width))
    if scale < 1.0:
        grey = resize(grey, _size(grey, scale))
    if min(grey.shape) < MIN_SIDE:
        raise NoDigitError(
            f"{where}: no digit found: a {width}x{height} image is too narrow to hold one"
        )
    ink = _ink(grey, where)
    return fit_digit(select_digit(ink, where=where), where=where)


def fit_digit(ink: np.ndarray, *, where: str = "image") -> np.ndarray:
    """MNIST's recipe: ``ink`` (light on black) cropped to its marks, fitted into 20x20 keeping
    its aspect ratio (area-averaged: MNIST's anti-aliasing), put in a 28x28 field with its
    centre of mass at the centre, scaled so its brightest pixel is 1."""
    rows, cols = np.nonzero(ink > 0)
    if rows.size == 0:
        raise NoDigitError(f"{where}: no digit found (the image is blank)")
    ink = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = ink.shape
    fit = BOX / max(height, width)
    size = (max(1, round(width * fit)), max(1, round(height * fit)))
    digit = np.clip(resize(ink, size), 0.0, 1.0)
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
