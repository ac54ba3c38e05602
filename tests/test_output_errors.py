"""Files mnistlab writes or reads that cannot be: one clear line naming the file for what it is, a
non-zero exit, and never a hang (a FIFO given to predict)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from mnistlab.apps.cli import main
from mnistlab.atomic import atomic_write, check_writable
from mnistlab.errors import CheckpointError, DataError, TrackingError
from mnistlab.io.checkpoint import CheckpointCallback
from mnistlab.training import train

from .conftest import small_config


@pytest.fixture(scope="module")
def run_dir(sample_splits, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    train(
        small_config("seed-softmax", "train.steps=20", "train.device=cpu"),
        sample_splits,
        callbacks=[CheckpointCallback(folder, every=0)],
    )
    return folder


def read_only_dir() -> Path:
    """A folder even root cannot write in (sysfs is mounted read-only or refuses new files)."""
    folder = Path("/sys")
    try:
        (folder / ".mnistlab-probe").touch()
    except OSError:
        return folder
    pytest.skip("no read-only folder on this machine")


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_export_to_a_read_only_folder(run_dir, fmt, capsys):
    target = read_only_dir() / f"model.{fmt}"
    assert main(["export", str(run_dir), "--format", fmt, "-o", str(target)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mnistlab: error: cannot write export file {target}")
    assert "checkpoint" not in err and len(err.splitlines()) == 1


def test_export_under_a_file_or_an_uncreatable_folder(run_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = blocker / "sub" / "model.safetensors"
    assert main(["export", str(run_dir), "-o", str(target)]) == 1
    err = capsys.readouterr().err
    assert f"{blocker} is a file, not a folder" in err and "checkpoint" not in err
    deep = read_only_dir() / "new-folder" / "model.safetensors"
    assert main(["export", str(run_dir), "-o", str(deep)]) == 1
    err = capsys.readouterr().err
    assert "its folder" in err and "cannot be created" in err
    assert main(["export", str(run_dir), "-o", str(tmp_path)]) == 1
    assert "it is a folder; choose a file name" in capsys.readouterr().err


def test_plot_errors_name_the_plot(run_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["eval", str(run_dir), "--plot", str(blocker / "eval.png")]) == 1
    err = capsys.readouterr().err
    assert "cannot write evaluation plot" in err and "checkpoint" not in err


def test_one_writer_for_every_family(tmp_path):
    target = tmp_path / "deep" / "x.bin"
    assert atomic_write(target, [b"ab", b"cd"], what="thing", error=DataError).read_bytes() == (
        b"abcd"
    )
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]  # no temp file left
    for family in (DataError, TrackingError, CheckpointError):
        with pytest.raises(family, match="cannot write thing"):
            check_writable(target / "y", what="thing", error=family)


def test_write_idx_under_a_file_is_a_data_error(tmp_path):
    from mnistlab.data.idx import write_idx

    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="cannot write IDX file"):
        write_idx(tmp_path / "f" / "a.gz", np.zeros(3, dtype=np.uint8))


def test_predict_refuses_a_fifo_at_once(tmp_path):
    from mnistlab.data.images import load_image

    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            load_image(fifo)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # blocked in open(): unblock it so the test run can go on, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        worker.join(5)
        pytest.fail("load_image blocked on a FIFO")
    assert isinstance(outcome[0], DataError)
    assert "named pipe (FIFO)" in str(outcome[0]) and "regular image files only" in str(outcome[0])


@pytest.mark.parametrize(
    ("trained_on", "warned"), [("kmnist", True), ("mnist", False), ("mnist-sample", False)]
)
def test_eval_on_another_dataset_warns(sample_splits, tmp_path, capsys, trained_on, warned):
    import json

    folder = tmp_path / "run"
    config = small_config(
        "seed-softmax", "train.steps=10", "train.device=cpu", f"data.dataset={trained_on}"
    )
    train(config, sample_splits, callbacks=[CheckpointCallback(folder, every=0)])
    assert main(["eval", str(folder), "--dataset", "mnist-sample", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["trained_on"] == trained_on
    assert ("warning" in result) == warned
    assert ("trained on kmnist but is evaluated on mnist-sample" in captured.err) == warned
