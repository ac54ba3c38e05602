"""Finding datasets offline: lookup order, explicit folders, the bundled sample, real MNIST."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from mnistlab.data.locate import SAMPLE_DIR, candidate_dirs, locate
from mnistlab.data.registry import DATASETS, get_dataset
from mnistlab.data.verify import load_arrays, verify
from mnistlab.errors import DataError

SAMPLE_NAMES = [fs.filename for fs in DATASETS["mnist-sample"].files]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point every lookup place into tmp_path so the real machine's folders never interfere."""
    places = {k: tmp_path / k for k in ("env", "xdg", "system", "explicit")}
    monkeypatch.delenv("MNISTLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(places["xdg"]))
    monkeypatch.setenv("MNISTLAB_SYSTEM_DATA", str(places["system"]))
    return places


def put_mnist_like(folder: Path, *, uncompressed: bool = False) -> Path:
    """Copy the bundled sample's files into ``folder`` (optionally gunzipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_NAMES:
        if uncompressed:
            (folder / name.removesuffix(".gz")).write_bytes(
                gzip.decompress((SAMPLE_DIR / name).read_bytes())
            )
        else:
            shutil.copy(SAMPLE_DIR / name, folder / name)
    return folder


def test_candidate_order(isolated_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNISTLAB_DATA", str(isolated_env["env"]))
    got = candidate_dirs("mnist")
    assert got == [
        ("env", isolated_env["env"] / "mnist"),
        ("env", isolated_env["env"]),
        ("cache", isolated_env["xdg"] / "mnistlab" / "mnist"),
        ("system", isolated_env["system"] / "mnist"),
    ]
    explicit = isolated_env["explicit"]
    assert candidate_dirs("mnist", explicit) == [
        ("data-dir", explicit / "mnist"),
        ("data-dir", explicit),
    ]


def test_home_cache_without_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ("cache", tmp_path / "home" / ".cache" / "mnistlab" / "kmnist") in candidate_dirs(
        "kmnist"
    )


def test_lookup_order_first_complete_folder_wins(
    isolated_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = "mnist"
    system = put_mnist_like(isolated_env["system"] / spec)
    assert locate(spec, download=False).source == "system"
    cache = put_mnist_like(isolated_env["xdg"] / "mnistlab" / spec)
    found = locate(spec, download=False)
    assert (found.source, found.directory) == ("cache", cache)
    monkeypatch.setenv("MNISTLAB_DATA", str(isolated_env["env"]))
    env = put_mnist_like(isolated_env["env"], uncompressed=True)  # the folder itself, not env/mnist
    found = locate(spec, download=False)
    assert (found.source, found.directory) == ("env", env)
    assert found.files["train_images"].name == "train-images-idx3-ubyte"
    explicit = put_mnist_like(isolated_env["explicit"] / spec)  # the NAME/ subfolder
    found = locate(spec, isolated_env["explicit"], download=False)
    assert (found.source, found.directory) == ("data-dir", explicit)
    assert system.is_dir()


def test_incomplete_folder_is_skipped(isolated_env: dict[str, Path]) -> None:
    cache = put_mnist_like(isolated_env["xdg"] / "mnistlab" / "mnist")
    (cache / SAMPLE_NAMES[1]).unlink()
    put_mnist_like(isolated_env["system"] / "mnist")
    assert locate("mnist", download=False).source == "system"


def test_explicit_data_dir_without_files_raises(isolated_env: dict[str, Path]) -> None:
    put_mnist_like(isolated_env["xdg"] / "mnistlab" / "mnist")  # would be found without data_dir
    explicit = isolated_env["explicit"]
    explicit.mkdir()
    (explicit / SAMPLE_NAMES[0]).write_bytes(b"")
    with pytest.raises(DataError) as exc:
        locate("mnist", explicit)
    msg = str(exc.value)
    for name in SAMPLE_NAMES:
        assert name in msg
    assert str(explicit / "mnist") in msg and str(explicit) in msg
    assert "only 1 of 4 files" in msg
    assert "--data-dir" in msg
    assert "Download" not in msg  # an explicit folder is never replaced by a download


def test_nothing_found_lists_every_place(
    isolated_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNISTLAB_DATA", str(isolated_env["env"]))
    with pytest.raises(DataError) as exc:
        locate("kmnist", download=False)
    msg = str(exc.value)
    for _, folder in candidate_dirs("kmnist"):
        assert str(folder) in msg
    for text in (
        "train-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "MNISTLAB_DATA",
        "mnistlab data download kmnist",
        "download disabled",
    ):
        assert text in msg


def test_bundled_sample_loads() -> None:
    located = locate("mnist-sample")
    assert located.source == "bundled"
    arrays = load_arrays(located)
    assert arrays["train_images"].shape == (4000, 28, 28)
    assert arrays["test_images"].shape == (1000, 28, 28)
    assert all(a.dtype == np.uint8 for a in arrays.values())
    for part, per_class in (("train", 400), ("test", 100)):
        assert np.bincount(arrays[f"{part}_labels"], minlength=10).tolist() == [per_class] * 10
    assert get_dataset("mnist-sample").validation_size == 500
    report = verify("mnist-sample")
    assert report.ok and all(c.checksum_ok for c in report.files)


def test_sample_in_data_dir_subfolder_or_bundled(isolated_env: dict[str, Path]) -> None:
    explicit = isolated_env["explicit"]
    put_mnist_like(explicit)  # files directly in the folder: not taken for the sample
    assert locate("mnist-sample", explicit).source == "bundled"
    sub = put_mnist_like(explicit / "mnist-sample", uncompressed=True)
    found = locate("mnist-sample", explicit)
    assert (found.source, found.directory) == ("data-dir", sub)
    report = verify("mnist-sample", explicit)
    assert report.ok, report.problems
    assert "content md5" in report.files[0].checksum_note


def test_verify_reports_a_corrupt_file(isolated_env: dict[str, Path]) -> None:
    folder = put_mnist_like(isolated_env["explicit"] / "mnist-sample")
    data = bytearray((folder / SAMPLE_NAMES[2]).read_bytes())
    data[-8] ^= 1
    (folder / SAMPLE_NAMES[2]).write_bytes(bytes(data))
    report = verify("mnist-sample", isolated_env["explicit"])
    assert not report.ok
    assert [c.ok for c in report.files] == [True, True, False, True]
    assert any(str(folder / SAMPLE_NAMES[2]) in p for p in report.problems)


def test_unknown_name_suggests_nearest() -> None:
    with pytest.raises(DataError, match="did you mean 'fashion-mnist'"):
        get_dataset("fashion_mnst")


def test_real_mnist_checksums(shared_mnist: Path) -> None:
    report = verify("mnist", shared_mnist)
    assert report.ok, report.problems
    assert all(c.checksum_ok and c.size_ok for c in report.files)
    arrays = load_arrays(report.located)
    assert arrays["train_images"].shape == (60000, 28, 28)
    assert arrays["train_labels"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert arrays["test_labels"][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_sample_images_are_genuine_mnist(shared_mnist: Path) -> None:
    """Each bundled image is byte-identical to the MNIST training image recorded in indices.json."""
    import json

    full = load_arrays(locate("mnist", shared_mnist))
    sample = load_arrays(locate("mnist-sample"))
    index = json.loads((SAMPLE_DIR / "indices.json").read_text())
    for part in ("train", "test"):
        idx = np.array(index[part])
        np.testing.assert_array_equal(sample[f"{part}_images"], full["train_images"][idx])
        np.testing.assert_array_equal(sample[f"{part}_labels"], full["train_labels"][idx])
    assert len(set(index["train"]) | set(index["test"])) == 5000


def run_cli(*argv: str) -> int:
    import argparse

    from mnistlab.apps.data_cmd import add_data_parser

    parser = argparse.ArgumentParser(prog="mnistlab")
    add_data_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_cli_data_commands(
    isolated_env: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli("data", "verify", "mnist-sample") == 0
    out = capsys.readouterr().out
    assert out.count("OK") == 4 and "all checks passed" in out
    assert run_cli("data", "path", "mnist-sample") == 0
    assert capsys.readouterr().out.strip() == str(SAMPLE_DIR)
    assert run_cli("data", "list") == 0
    table = capsys.readouterr().out
    assert "mnist-sample" in table and "bundled" in table and "not found" in table
    assert run_cli("data", "info", "kmnist") == 0
    assert "CC BY-SA 4.0" in capsys.readouterr().out
    folder = put_mnist_like(isolated_env["explicit"] / "mnist-sample")
    (folder / SAMPLE_NAMES[1]).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x0c"))
    assert (
        run_cli("data", "verify", "mnist-sample", "--data-dir", str(isolated_env["explicit"])) == 1
    )
    assert "FAIL" in capsys.readouterr().out
    with pytest.raises(DataError, match="not found"):
        run_cli("data", "path", "mnist", "--data-dir", str(isolated_env["explicit"]))


def test_progress_output_without_tty() -> None:
    import io

    from mnistlab.io.progress import download_progress

    buf = io.StringIO()
    progress = download_progress(buf)
    for done in (0, 500, 1000):
        progress("a.gz", done, 1000)
    progress("b.gz", 0, None)
    assert buf.getvalue().splitlines() == ["downloading a.gz (0.0 MB)", "downloading b.gz"]


def test_download_progress_on_a_terminal_is_the_shared_bar() -> None:
    import io

    from mnistlab.io.progress import download_progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    buf = Terminal()
    progress = download_progress(buf)
    for done in (0, 1_000_000, 2_000_000):
        progress("a.gz", done, 2_000_000)
    last = buf.getvalue().split("\r\033[K")[-1]
    assert last.startswith("a.gz  [####") and "100.0% 2/2 MB" in last and last.endswith("\n")


def test_images_of_another_shape_than_the_dataset_are_refused() -> None:
    """A dataset's ``input_shape`` is checked against its files (models are built for it)."""
    import dataclasses

    from mnistlab.data.verify import _cross_checks

    spec = dataclasses.replace(get_dataset("mnist-sample"), input_shape=(1, 32, 32))
    arrays = {
        "train_images": np.zeros((3, 28, 28), np.uint8),
        "train_labels": np.zeros(3, np.uint8),
    }
    files = {"train_images": Path("train-images"), "train_labels": Path("train-labels")}
    assert _cross_checks(spec, arrays, files) == [
        "train-images: images are 28x28 but mnist-sample images are 32x32"
    ]
    assert _cross_checks(get_dataset("mnist-sample"), arrays, files) == []


@pytest.mark.parametrize("via", ["data-dir", "env"])
def test_a_folder_name_that_is_not_utf8_is_one_clear_error(tmp_path, monkeypatch, via):
    import os

    folder = put_mnist_like(Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xffname")))
    if via == "env":
        monkeypatch.setenv("MNISTLAB_DATA", str(folder))
    with pytest.raises(DataError, match=r"bad\\xffname has a name that is not UTF-8") as err:
        locate("mnist", str(folder) if via == "data-dir" else None, download=False)
    assert "\n" not in str(err.value)
    str(err.value).encode("ascii")  # printable anywhere: the byte is shown as \xff


# -- the MNIST family shares its file names: a folder of one is never judged as another ---------
def tiny_registered(folder: Path, name: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Small IDX files in ``folder``, registered (for this test) as ``name``'s published content."""
    import dataclasses
    import hashlib

    from mnistlab.data.idx import encode_idx, write_idx
    from mnistlab.data.registry import FileSpec

    rng = np.random.default_rng(seed)
    spec = get_dataset(name)
    files = []
    folder.mkdir(parents=True, exist_ok=True)
    for fs in spec.files:
        n = 30 if fs.role.startswith("train") else 10
        if fs.role.endswith("images"):
            arr = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        else:
            arr = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / fs.filename, arr)
        raw = hashlib.md5(encode_idx(arr)).hexdigest()
        files.append(FileSpec(fs.role, fs.filename, None, "0" * 32, None, raw))
    monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, files=tuple(files)))
    return folder


@pytest.fixture
def mnist_and_cached_fashion(tmp_path, monkeypatch, isolated_env) -> Path:
    """A folder of the user's MNIST (as --data-dir), Fashion-MNIST in the cache, no KMNIST."""
    tiny_registered(
        isolated_env["xdg"] / "mnistlab" / "fashion-mnist", "fashion-mnist", 1, monkeypatch
    )
    return tiny_registered(tmp_path / "my-mnist", "mnist", 0, monkeypatch)


@pytest.mark.parametrize("via", ["data-dir", "env"])
def test_train_another_dataset_with_a_mnist_folder_looks_on_in_the_cache(
    mnist_and_cached_fashion, via, monkeypatch
):
    from mnistlab.data import load_splits
    from mnistlab.data.locate import DatasetNotFound

    mnist = mnist_and_cached_fashion
    data_dir = str(mnist) if via == "data-dir" else None
    if via == "env":
        monkeypatch.setenv("MNISTLAB_DATA", str(mnist))
    # train --dataset fashion-mnist --data-dir MNIST: what train loads, from the cache
    found = locate("fashion-mnist", data_dir, download=False)
    assert found.source == "cache" and found.name == "fashion-mnist"
    splits = load_splits("fashion-mnist", data_dir, validation_size=5, download=False)
    assert splits.name == "fashion-mnist" and len(splits.train) == 25
    with pytest.raises(DatasetNotFound, match=r"holds MNIST .*'s files, not kmnist's"):
        locate("kmnist", data_dir, download=False)
    assert locate("mnist", data_dir, download=False).directory == mnist


@pytest.mark.parametrize("via", ["data-dir", "env"])
def test_doctor_on_a_good_mnist_folder_calls_nothing_damaged(
    mnist_and_cached_fashion, via, monkeypatch, capsys
):
    from mnistlab.apps import doctor
    from mnistlab.apps.cli import main

    mnist = mnist_and_cached_fashion
    findings = {f.check: f for f in doctor.dataset_findings(str(mnist))}
    assert findings["dataset mnist"].status == "ok"
    assert findings["dataset fashion-mnist"].status == "ok"
    assert "cache" in findings["dataset fashion-mnist"].detail
    assert findings["dataset kmnist"].status == "note"
    assert not any("delete" in f.fix for f in findings.values())

    # the command as a person runs it (the machine's own checks aside): exit 0, nothing to delete
    for other in ("version_findings", "device_findings", "package_findings"):
        monkeypatch.setattr(doctor, other, lambda *a: [])
    args = ["doctor", "--run-dir", str(mnist.parent / "runs")]
    if via == "data-dir":
        args += ["--data-dir", str(mnist)]
    else:
        monkeypatch.setenv("MNISTLAB_DATA", str(mnist))
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "PROBLEM" not in text and "damaged" not in text and "delete" not in text
    assert "All is well" in text


@pytest.mark.parametrize("via", ["data-dir", "env"])
def test_data_list_does_not_claim_other_datasets_in_a_mnist_folder(
    mnist_and_cached_fashion, via, monkeypatch, capsys
):
    from mnistlab.apps.cli import main

    mnist = mnist_and_cached_fashion
    args = ["data", "list"]
    if via == "data-dir":
        args += ["--data-dir", str(mnist)]
    else:
        monkeypatch.setenv("MNISTLAB_DATA", str(mnist))
    assert main(args) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert str(mnist) in rows["mnist"]
    assert str(mnist) not in rows["fashion-mnist"] and "cache" in rows["fashion-mnist"]
    assert str(mnist) not in rows["kmnist"] and "not found" in rows["kmnist"]


def test_doctor_never_advises_deleting_a_folder_of_the_users(tmp_path, monkeypatch):
    from mnistlab.apps import doctor

    mnist = tiny_registered(tmp_path / "my-mnist", "mnist", 0, monkeypatch)
    labels = mnist / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-9])  # truncated: damaged, and still MNIST's name
    found = {f.check: f for f in doctor.dataset_findings(str(mnist))}["dataset mnist"]
    assert found.status == "problem"
    assert "delete" not in found.fix and "good copy" in found.fix


def test_label_range_and_counts_are_checked_also_when_the_checksum_fails(tmp_path):
    from mnistlab.data.idx import read_idx, write_idx

    folder = put_mnist_like(tmp_path / "d" / "mnist-sample")
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz").copy()
    labels[:3] = 12  # three labels out of range: the checksum fails too
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[:-1])  # and one label short
    report = verify("mnist-sample", tmp_path / "d")
    text = " | ".join(report.problems)
    assert "differs from the published" in text
    assert "3 labels outside 0..9 (largest 12)" in text
    assert "has 1000 images but" in text and "has 999 labels" in text
