"""IDX reading/writing: round trips, and every kind of damaged file is a DataError naming the path."""

from __future__ import annotations

import gzip
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from mnistlab.data.idx import encode_idx, read_idx, read_idx_header, write_idx
from mnistlab.data.locate import Located
from mnistlab.data.registry import DATASETS
from mnistlab.data.verify import load_arrays
from mnistlab.errors import DataError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path: Path, dtype: type, compress: bool) -> None:
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal((7, 5, 3)) * 100).astype(dtype)
    path = write_idx(tmp_path / "a.idx", arr, compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    assert back.dtype.isnative
    np.testing.assert_array_equal(back, arr)
    assert read_idx_header(path).shape == (7, 5, 3)


def test_compression_follows_suffix_and_content_not_name(tmp_path: Path) -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz = write_idx(tmp_path / "x-idx2-ubyte.gz", arr)
    raw = write_idx(tmp_path / "x-idx2-ubyte", arr)
    assert gz.read_bytes()[:2] == b"\x1f\x8b" and raw.read_bytes()[:4] == b"\x00\x00\x08\x02"
    # A gzip file without .gz, and a raw file named .gz, are both read by content.
    swapped_gz, swapped_raw = tmp_path / "plain", tmp_path / "fake.gz"
    swapped_gz.write_bytes(gz.read_bytes())
    swapped_raw.write_bytes(raw.read_bytes())
    np.testing.assert_array_equal(read_idx(swapped_gz), arr)
    np.testing.assert_array_equal(read_idx(swapped_raw), arr)


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    arr = np.arange(100, dtype=np.uint8)
    a = write_idx(tmp_path / "a.gz", arr).read_bytes()
    b = write_idx(tmp_path / "b.gz", arr).read_bytes()
    assert a == b


def test_big_endian_values(tmp_path: Path) -> None:
    path = tmp_path / "be"
    path.write_bytes(bytes([0, 0, 0x0B, 1]) + struct.pack(">I", 2) + struct.pack(">hh", 258, -2))
    assert read_idx(path).tolist() == [258, -2]


def _raw(arr: np.ndarray) -> bytes:
    return encode_idx(arr)


GOOD = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x01\x00\x08\x03" + _raw(GOOD)[4:], "two zero bytes"),
        (b"\x00\x00\x0a\x03" + _raw(GOOD)[4:], "dtype code 0x0A"),
        (b"\x00\x00\x08\x05" + _raw(GOOD)[4:], "5 dimensions"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (_raw(GOOD)[:-1], "truncated"),
        (_raw(GOOD) + b"\x00", "trailing bytes"),
        (_raw(GOOD)[:10], "truncated IDX header"),
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 0), "zero dimension"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_corrupt_idx(tmp_path: Path, content: bytes, words: str, compress: bool) -> None:
    path = tmp_path / "bad-file"
    path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert str(path) in str(exc.value)
    assert words in str(exc.value)


def test_truncated_gzip(tmp_path: Path) -> None:
    data = gzip.compress(_raw(np.arange(5000, dtype=np.uint8)), mtime=0)
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated gzip") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


def test_bad_gzip_crc(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(_raw(GOOD), mtime=0))
    data[-8] ^= 0xFF  # the CRC32 in the trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt gzip") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


def test_corrupt_deflate_stream(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(_raw(np.arange(3000, dtype=np.uint8) % 7), mtime=0))
    data[15:25] = b"\xff" * 10
    path = tmp_path / "garbled.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("compress", [False, True])
def test_hostile_header_fails_fast(tmp_path: Path, compress: bool) -> None:
    """A header claiming 2^31 x 2^31 images must not make us allocate that much."""
    head = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 2**31, 2**31, 28)
    content = head + b"\x00" * 4096
    path = tmp_path / "hostile.gz"
    path.write_bytes(gzip.compress(content) if compress else content)
    start = time.perf_counter()
    with pytest.raises(DataError, match="truncated") as exc:
        read_idx(path)
    assert time.perf_counter() - start < 1.0
    assert str(path) in str(exc.value)


def test_zip_bomb_beyond_header_stops_early(tmp_path: Path) -> None:
    """More decompressed bytes than the header promises: stop as soon as they exceed it."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    body = comp.compress(_raw(GOOD))
    zeros = b"\x00" * (1 << 20)
    for _ in range(256):  # 256 MiB of zeros, about 250 KB compressed
        body += comp.compress(zeros)
    body += comp.flush()
    path = tmp_path / "bomb.gz"
    path.write_bytes(body)
    start = time.perf_counter()
    with pytest.raises(DataError, match="more than"):
        read_idx(path)
    assert time.perf_counter() - start < 1.0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope")


def test_write_rejects_unsupported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dtype"):
        write_idx(tmp_path / "a", np.zeros(3, dtype=np.uint16))
    with pytest.raises(DataError, match="shape"):
        write_idx(tmp_path / "a", np.zeros((1, 1, 1, 1, 1), dtype=np.uint8))


def _located(folder: Path, arrays: dict[str, np.ndarray]) -> Located:
    """A Located for mnist-sample's file names written from ``arrays`` (checksums not known)."""
    spec = DATASETS["mnist-sample"]
    files = {}
    for fs in spec.files:
        files[fs.role] = write_idx(folder / fs.filename, arrays[fs.role])
    return Located(spec.name, folder, "data-dir", files, spec)


def _arrays(n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    return {
        "train_images": np.zeros((n_train, 28, 28), np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": np.zeros((n_test, 28, 28), np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }


def test_load_arrays_accepts_consistent_files(tmp_path: Path) -> None:
    out = load_arrays(_located(tmp_path, _arrays()), check_checksums=False)
    assert out["train_images"].shape == (20, 28, 28) and out["test_labels"].shape == (10,)


def test_labels_out_of_range(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["train_labels"][3] = 12
    with pytest.raises(DataError, match=r"1 labels outside 0\.\.9 \(largest 12\)") as exc:
        load_arrays(_located(tmp_path, arrays), check_checksums=False)
    assert "train-labels-idx1-ubyte.gz" in str(exc.value)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["test_labels"] = arrays["test_labels"][:9]
    with pytest.raises(DataError, match="has 10 images but .* has 9 labels"):
        load_arrays(_located(tmp_path, arrays), check_checksums=False)


def test_checksum_mismatch_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="differs from the published") as exc:
        load_arrays(_located(tmp_path, _arrays()))
    assert str(tmp_path) in str(exc.value)


def test_wrong_rank_images(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["train_images"] = np.zeros((20, 784), np.uint8)
    with pytest.raises(DataError, match="expected 3-D uint8 train images"):
        load_arrays(_located(tmp_path, arrays), check_checksums=False)
