"""What a request to ``POST /api/predict`` carries, as the 28x28 digit a model reads.

A body is an image file (PNG, JPEG, GIF, BMP, WebP) or JSON: a 28x28 array of [0, 1] values
(0-255 is scaled), bare or as ``{"image": [...], "preprocess": false}``; with
``"preprocess": true`` the array is any 2-D grey picture and goes through ``mnistlab predict``'s
preprocessing. The JSON is read strictly: numbers only (no NaN, no Infinity, no booleans standing in
for numbers), a real boolean for ``preprocess``, no unknown fields, bounded size and depth.

Everything wrong is a typed error, so the app picks the status by type, never by the words of a
message: ``RequestError`` (its own status: 400, 413, 415), ``NoDigitError`` (the request was read
but holds no digit: 422), ``ImageError`` / ``DataError`` (the image cannot be read: 400).
Nothing here touches the disk or unpickles anything.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnistlab.data.images import decode_image, preprocess
from mnistlab.errors import ImageError, MnistlabError, NoDigitError

MAX_BODY = 2 * 1024 * 1024
"""Largest request body, in bytes: a canvas PNG is a few kilobytes, a phone photo a few MB."""
MAX_PIXELS = 4_000_000
"""Largest image, in pixels (2000x2000), checked in the header before anything is decoded: a small
upload that claims more is a decompression bomb."""
MAX_VALUES = 1_000_000
"""Largest JSON array (values) taken with ``"preprocess": true``."""
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp")

BLANK_CONTRAST = 0.1
"""Below this spread of grey levels an image or array holds no ink at all."""
MIN_INK_PIXELS = 10
"""A 28x28 array with fewer pixels at ink level (>= 0.5) is too small to be a digit. Every one of
the 5,000 digits of the bundled MNIST sample has at least 23 such pixels; a dot has 4 to 9."""


class RequestError(MnistlabError):
    """A request the server refuses before any model sees it: the HTTP status says why.

    ``reason`` is a short machine-readable word for scripts and the page; ``close`` asks for the
    connection to be closed after the answer (the body was not read to its end)."""

    def __init__(
        self, status: int, message: str, *, reason: str = "bad-request", close: bool = False
    ):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.close = close


def _refuse_constant(name: str) -> float:
    raise RequestError(400, f"the JSON holds {name}, which is not a number: send finite numbers")


def _finite(text: str) -> float:
    value = float(text)  # an integer of 5,000 digits becomes inf here, not a slow exact int
    if not math.isfinite(value):
        raise RequestError(
            400, f"the JSON number {text[:20]}... is out of range: send 0-1 or 0-255"
        )
    return value


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``; numbers become floats (finite ones only)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "the body is not valid JSON (not UTF-8 text)") from None
    try:
        return json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite, parse_int=_finite
        )
    except RecursionError:
        raise RequestError(
            400, 'the JSON is nested too deeply: send {"image": [[...28 numbers...], ...28 rows]}'
        ) from None
    except ValueError as exc:
        raise RequestError(400, f"the body is not valid JSON ({exc})") from None


def _grid(value: Any, *, exact: bool) -> np.ndarray:
    """A float32 array from a list of rows of numbers, checked strictly."""
    shape_hint = "a 28x28 array of numbers (28 lists of 28 numbers)"
    if not exact:
        shape_hint = "a 2-D array of numbers (a list of rows of equal length)"
    if not isinstance(value, list) or not value or not all(isinstance(r, list) for r in value):
        raise RequestError(400, f"'image' must be {shape_hint}")
    height, width = len(value), len(value[0])
    if width == 0 or any(len(row) != width for row in value):
        raise RequestError(400, f"'image' must be {shape_hint}; its rows differ in length")
    if exact and (height, width) != (28, 28):
        raise RequestError(
            400,
            f"'image' must be {shape_hint}; got {height}x{width} (send \"preprocess\": "
            "true to have a picture of another size cropped and fitted)",
        )
    if height * width > MAX_VALUES:
        raise RequestError(
            413,
            f"the array is too large ({height}x{width}; at most {MAX_VALUES:,} values)",
            reason="too-large",
        )
    if not all(type(v) is float for row in value for v in row):
        raise RequestError(400, f"'image' must be {shape_hint}; it holds something else")
    arr = np.asarray(value, dtype=np.float32)
    if not np.isfinite(arr).all():  # finite as float64, but beyond float32's range
        raise RequestError(400, "the array holds values out of range: send 0-1 or 0-255")
    low, high = float(arr.min()), float(arr.max())
    if low < 0.0 or high > 255.0:
        raise RequestError(
            400, f"pixel values must lie in [0, 1] (or 0-255); got {low:g} to {high:g}"
        )
    return arr / 255.0 if high > 1.0 else arr


def _digit_from_json(body: bytes) -> np.ndarray:
    value = parse_json(body)
    wants_preprocess = False
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"image", "preprocess"})
        if unknown:
            raise RequestError(
                400, f"unknown field {unknown[0]!r}: the JSON takes 'image' and 'preprocess'"
            )
        if "image" not in value:
            raise RequestError(400, "the JSON has no 'image' field")
        wants_preprocess = value.get("preprocess", False)
        if not isinstance(wants_preprocess, bool):
            raise RequestError(
                400,
                f"'preprocess' must be true or false (a JSON boolean); got {wants_preprocess!r}",
            )
        value = value["image"]
    arr = _grid(value, exact=not wants_preprocess)
    require_ink(arr, where="the array")
    if wants_preprocess:
        return preprocess(arr, where="the array")
    if int((arr >= 0.5).sum()) < MIN_INK_PIXELS:
        raise NoDigitError(
            f"the array: too little ink to be a digit ({int((arr >= 0.5).sum())} pixels at ink "
            f"level; MNIST digits have more than {MIN_INK_PIXELS})"
        )
    return arr


def require_ink(grey: np.ndarray, *, where: str) -> None:
    """Refuse an image with non-finite values (ImageError) or no ink at all (NoDigitError)."""
    if not np.isfinite(grey).all():
        raise ImageError(f"{where}: holds NaN or infinite pixel values")
    if float(grey.max()) - float(grey.min()) < BLANK_CONTRAST:
        raise NoDigitError(f"{where}: no digit found (it is blank)")


def check_pixels(body: bytes, *, max_pixels: int = MAX_PIXELS) -> None:
    """A ``RequestError`` (413) if the image's header claims more than ``max_pixels``. Only the
    header is read; an image PIL cannot even open is left for the decoder to report."""
    try:
        with Image.open(io.BytesIO(body)) as img:
            width, height = img.size
    except Image.DecompressionBombError:  # PIL's own limit, far above ours
        raise RequestError(
            413,
            "the image is too large: it claims so many pixels it could be a "
            "decompression bomb; scale it down first",
            reason="too-large",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        return
    if width * height > max_pixels:
        raise RequestError(
            413,
            f"the image is too large: it claims {width}x{height} pixels, more than the "
            f"server takes ({max_pixels:,}); scale it down first",
            reason="too-large",
        )


def digit_from_request(content_type: str, body: bytes) -> np.ndarray:
    """The 28x28 float32 digit (light ink on black, in [0, 1]) that a request carries."""
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        raise RequestError(400, 'empty body: send a PNG or JPEG image, or JSON {"image": 28x28}')
    if kind == "application/json":
        return _digit_from_json(body)
    if kind in IMAGE_TYPES:
        check_pixels(body)
        grey = decode_image(io.BytesIO(body), where="the image", max_pixels=MAX_PIXELS)
        require_ink(grey, where="the image")
        return preprocess(grey, where="the image")
    raise RequestError(
        415,
        f"unsupported content type {kind or '(none)'!r}: send image/png, image/jpeg or "
        "application/json",
        reason="content-type",
    )
