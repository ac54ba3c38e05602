"""Data that is there but wrong: a corrupt cache, another dataset's files, odd entries in place of
files. Each must be one clear message, never a silent swap for the bundled sample."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mnistlab.config import resolve
from mnistlab.data.idx import encode_idx, write_idx
from mnistlab.data.locate import SAMPLE_DIR, DatasetNotFound, find_files, locate
from mnistlab.data.registry import DATASETS, FASHION_MNIST, FileSpec, get_dataset
from mnistlab.data.verify import identify, load_arrays
from mnistlab.errors import DataError

SAMPLE = DATASETS["mnist-sample"]
NAMES = [fs.filename for fs in SAMPLE.files]


@pytest.fixture
def sample_as_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the bundled sample's checksums under the name ``mnist`` (no mirrors), so a copy
    of the sample in the cache plays full MNIST without 50 MB of test data or a network."""
    spec = dataclasses.replace(SAMPLE, name="mnist", bundled=False, mirrors=())
    monkeypatch.setitem(DATASETS, "mnist", spec)


def copy_sample(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        shutil.copy(SAMPLE_DIR / name, folder / name)
    return folder


def flip_byte(path: Path, offset: int = -8) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def cache_dir() -> Path:
    return Path(os.environ["XDG_CACHE_HOME"]) / "mnistlab" / "mnist"


def test_corrupt_cached_mnist_is_an_error_not_a_fallback(sample_as_mnist: None) -> None:
    from mnistlab.session import load_data

    folder = copy_sample(cache_dir())
    flip_byte(folder / "train-images-idx3-ubyte.gz")
    config = resolve(None, None, ["train.steps=20", "train.device=cpu"])
    with pytest.raises(DataError) as info:
        load_data(config, quiet=True)
    assert not isinstance(info.value, DatasetNotFound)
    msg = str(info.value)
    assert str(folder / "train-images-idx3-ubyte.gz") in msg
    assert "(the cache)" in msg and "mnistlab data download mnist" in msg
    assert "delete it" not in msg


def test_corrupt_mnist_in_env_folder_names_the_variable(
    sample_as_mnist: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_sample(tmp_path / "env")
    flip_byte(folder / "t10k-labels-idx1-ubyte.gz")
    monkeypatch.setenv("MNISTLAB_DATA", str(folder))
    with pytest.raises(DataError, match="MNISTLAB_DATA") as info:
        load_arrays(locate("mnist"))
    assert "t10k-labels-idx1-ubyte.gz" in str(info.value)


def test_cli_exits_non_zero_on_a_corrupt_cache(
    sample_as_mnist: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnistlab.apps.cli import main

    flip_byte(copy_sample(cache_dir()) / "train-images-idx3-ubyte.gz")
    assert main(["train", "--set", "train.steps=20", "--quiet", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "failed verification" in err and "mnist-sample" not in err


def test_absent_mnist_still_falls_back_to_the_sample(
    sample_as_mnist: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnistlab.session import load_data

    config = resolve(None, None, ["train.device=cpu"])
    with pytest.raises(DatasetNotFound):
        locate("mnist")
    config, data = load_data(config, quiet=True)
    assert data.name == "mnist-sample" and config.data.dataset == "mnist-sample"
    assert "bundled mnist-sample" in capsys.readouterr().err


# -- another registered dataset's files -------------------------------------------------------------
def small_fashion(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny IDX files written by the project's writer, registered as Fashion-MNIST's content."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 30, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 10, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for fs in FASHION_MNIST.files:
        # as Debian ships them: gzip with a header of its own, so only the content md5 matches
        write_idx(folder / fs.filename, arrays[fs.role])
        raw = hashlib.md5(encode_idx(arrays[fs.role])).hexdigest()
        files.append(FileSpec(fs.role, fs.filename, None, "0" * 32, None, raw))
    fake = dataclasses.replace(FASHION_MNIST, files=tuple(files))
    monkeypatch.setitem(DATASETS, "fashion-mnist", fake)
    return folder


def test_fashion_files_given_as_mnist_are_recognised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mnistlab.apps.cli import main

    folder = small_fashion(tmp_path / "fashion-mnist", monkeypatch)
    # Fashion-MNIST's files are never judged as MNIST's: the folder is passed over, and said so
    with pytest.raises(DataError) as info:
        locate("mnist", folder, download=False)
    msg = str(info.value)
    assert "holds Fashion-MNIST's files, not mnist's; for those, --dataset fashion-mnist" in msg
    assert "corrupt" not in msg and "delete" not in msg
    assert identify(find_files(get_dataset("mnist"), folder)[0]) is DATASETS["fashion-mnist"]
    assert locate("fashion-mnist", folder, download=False).directory == folder
    # the command a user types: --data-dir, no --dataset
    assert main(["train", "--data-dir", str(folder), "--quiet", "--device", "cpu"]) == 1
    assert "--dataset fashion-mnist" in capsys.readouterr().err


def test_unknown_files_are_not_misidentified(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    for fs in get_dataset("mnist").files:
        n = 3 if fs.role.endswith("images") else 1
        shape = (n, 28, 28) if fs.role.endswith("images") else (n,)
        write_idx(folder / fs.filename, np.zeros(shape, dtype=np.uint8))
    with pytest.raises(DataError, match="corrupt, truncated or a different dataset"):
        load_arrays(locate("mnist", folder, download=False))


# -- odd entries in place of files ------------------------------------------------------------------
def test_folder_or_symlink_loop_in_place_of_a_file_is_named(tmp_path: Path) -> None:
    folder = copy_sample(tmp_path / "d")
    (folder / NAMES[0]).unlink()
    (folder / NAMES[0]).mkdir()
    (folder / NAMES[1]).unlink()
    os.symlink(folder / "loop-b", folder / "loop-a")
    os.symlink(folder / "loop-a", folder / "loop-b")
    os.symlink(folder / "loop-a", folder / NAMES[1])
    (folder / NAMES[2]).unlink()
    os.symlink(folder / "gone", folder / NAMES[2])
    with pytest.raises(DataError) as info:
        locate("mnist", folder, download=False)
    msg = str(info.value)
    assert f"{NAMES[0]} is a folder, not a file" in msg
    assert f"{NAMES[1]} is a symlink loop" in msg
    assert f"{NAMES[2]} is a symlink to {folder / 'gone'}, which does not exist" in msg
    assert "only 1 of 4 files" in msg


def test_full_mnist_tests_honour_mnistlab_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from .conftest import SHARED_MNIST, find_full_mnist

    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path))
    assert find_full_mnist() == tmp_path / "mnist"
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path / "elsewhere"))
    assert find_full_mnist() in (SHARED_MNIST, None)
