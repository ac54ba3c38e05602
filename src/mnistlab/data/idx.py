"""Read and write IDX files, the format MNIST and its relatives ship in.

An IDX file is a 4-byte magic (two zero bytes, a dtype code, the number of dimensions), one
big-endian uint32 per dimension, then the array in C order, big-endian. Files are usually gzip
compressed; we detect that from the gzip magic bytes, never from the name.

Every defect is a ``DataError`` that names the file and what is wrong. The size the header promises
is checked against the bytes that actually arrive *before* anything that big is allocated, so a
hostile header claiming 2^31 x 2^31 images fails at once instead of exhausting memory.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistlab.atomic import atomic_write
from mnistlab.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_BY_KIND: dict[tuple[str, int], int] = {
    (dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()
}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class IdxHeader:
    """What an IDX header says: element type, shape, and where the payload starts."""

    dtype: np.dtype
    shape: tuple[int, ...]
    header_size: int

    @property
    def payload_size(self) -> int:
        """Bytes the payload must have, computed in Python ints so it cannot overflow."""
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def is_gzip(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the gzip magic bytes (the name does not matter)."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def parse_header(head: bytes, path: str | os.PathLike[str]) -> IdxHeader:
    """Decode and sanity-check the leading bytes of an IDX file."""
    if len(head) < 4:
        raise DataError(f"{path}: not an IDX file: only {len(head)} bytes, too short for a header")
    z0, z1, code, ndim = head[0], head[1], head[2], head[3]
    if z0 != 0 or z1 != 0:
        raise DataError(
            f"{path}: not an IDX file: magic starts with {head[:4].hex()} instead of two zero bytes"
        )
    if code not in IDX_DTYPES:
        raise DataError(
            f"{path}: unknown IDX dtype code 0x{code:02X} (expected one of "
            f"{', '.join(f'0x{c:02X}' for c in IDX_DTYPES)})"
        )
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: IDX header claims {ndim} dimensions (expected 1 to 4)")
    header_size = 4 + 4 * ndim
    if len(head) < header_size:
        raise DataError(f"{path}: truncated IDX header: {len(head)} of {header_size} bytes")
    shape = struct.unpack(f">{ndim}I", head[4:header_size])
    if any(d == 0 for d in shape):
        raise DataError(f"{path}: IDX header has a zero dimension {tuple(shape)}")
    return IdxHeader(IDX_DTYPES[code], tuple(int(d) for d in shape), header_size)


def _gzip_stream(path: str | os.PathLike[str], limit: int) -> Iterator[bytes]:
    """Yield decompressed chunks, stopping with an error once more than ``limit`` bytes arrive.

    Multi-member gzip files are followed (as ``gzip`` itself does); zlib checks each member's CRC
    and length at its end, so a corrupt or cut stream raises here.
    """
    produced = 0
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    with open(path, "rb") as f:
        while raw := f.read(_CHUNK):
            while raw:
                if d.eof:  # another member follows, or zero padding
                    if raw.strip(b"\x00") == b"":
                        break
                    if raw[:2] != GZIP_MAGIC:
                        raise DataError(f"{path}: trailing garbage after the gzip stream")
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                try:
                    out = d.decompress(raw, min(limit + 1 - produced, _CHUNK * 16))
                except zlib.error as e:
                    raise DataError(f"{path}: corrupt gzip data ({e})") from None
                produced += len(out)
                if produced > limit:
                    raise DataError(
                        f"{path}: decompresses to more than the {limit} bytes its IDX header "
                        "promises (trailing bytes or wrong dimensions)"
                    )
                if out:
                    yield out
                raw = d.unused_data if d.eof else d.unconsumed_tail
    if not d.eof:
        raise DataError(f"{path}: truncated gzip stream (ends before its end marker)")


def _read_head(path: str | os.PathLike[str], gz: bool) -> bytes:
    """The first up to 20 bytes of content (the largest possible IDX header).

    For gzip, decompress with a tiny output cap so even a zip bomb costs nothing here.
    """
    if not gz:
        with open(path, "rb") as f:
            return f.read(20)
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    head = b""
    with open(path, "rb") as f:
        raw = f.read(4096)
        while raw and len(head) < 20 and not d.eof:
            try:
                head += d.decompress(raw, 20 - len(head))
            except zlib.error as e:
                raise DataError(f"{path}: corrupt gzip data ({e})") from None
            raw = d.unconsumed_tail or f.read(4096)
    if len(head) < 4 and not d.eof:
        raise DataError(f"{path}: truncated or empty gzip stream")
    return head


def read_idx_header(path: str | os.PathLike[str]) -> IdxHeader:
    """Parse only the header (cheap: reads a few bytes, even from a gzip file)."""
    _check_exists(path)
    return parse_header(_read_head(path, is_gzip(path)), path)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Load an IDX file (gzip or raw) as a native-endian numpy array, fully validated."""
    _check_exists(path)
    gz = is_gzip(path)
    header = parse_header(_read_head(path, gz), path)
    expected = header.header_size + header.payload_size
    if gz:
        data = bytearray()
        for chunk in _gzip_stream(path, expected):
            data += chunk
        actual = len(data)
    else:
        actual = os.path.getsize(path)
        if actual == expected:
            data = bytearray(Path(path).read_bytes())
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX payload {what}: header {header.shape} needs {expected} bytes, "
            f"file holds {actual}"
        )
    arr = np.frombuffer(data, dtype=header.dtype, offset=header.header_size)
    arr = arr.reshape(header.shape)
    if header.dtype.itemsize > 1 and header.dtype.byteorder != "=":
        arr = arr.astype(header.dtype.newbyteorder("="))
    return arr


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes for ``array`` (uncompressed)."""
    arr = np.asarray(array)
    code = _CODE_BY_KIND.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise DataError(
            f"cannot store dtype {arr.dtype} in IDX (use uint8, int8/16/32, float32/64)"
        )
    if not 1 <= arr.ndim <= 4 or 0 in arr.shape:
        raise DataError(f"cannot store shape {arr.shape} in IDX (1 to 4 non-empty dimensions)")
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(
    path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None
) -> Path:
    """Write ``array`` as IDX; gzip it when ``compress`` is true (default: when the name ends .gz).

    Gzip output uses mtime 0 and no stored name, so the same array always gives the same bytes.
    Written atomically (``mnistlab.atomic``), so a crash never leaves half a file.
    """
    path = Path(path)
    if compress is None:
        compress = path.suffix == ".gz"
    payload = encode_idx(array)
    if compress:
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    return atomic_write(path, payload, what="IDX file", error=DataError)


def _check_exists(path: str | os.PathLike[str]) -> None:
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
