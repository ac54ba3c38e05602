"""Checkpoints: exact resume, atomic saves, safe and verified loads, retention, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import mnistlab
from mnistlab.apps.cli import main
from mnistlab.config import set_value
from mnistlab.errors import CheckpointError, ConfigError
from mnistlab.io.checkpoint import (
    CheckpointCallback,
    legacy,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
    step_checkpoints,
)
from mnistlab.io.checkpoint import fileformat as ck
from mnistlab.training import build_run, train

from .conftest import small_config

SRC = str(Path(mnistlab.__file__).resolve().parents[1])


def leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor and plain value in a nested state, by path."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out |= leaves(value, f"{prefix}/{key}")
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, value in enumerate(obj):
            out |= leaves(value, f"{prefix}/{i}")
        return out
    return {prefix: obj}


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> tuple[int, float]:
    """Bit-equal: same paths, same tensors (dtype and every bit), same plain values."""
    la, lb = leaves(a), leaves(b)
    assert la.keys() == lb.keys()
    tensors, worst = 0, 0.0
    for key, x in la.items():
        y = lb[key]
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape, key
            assert torch.equal(x, y), key
            if x.is_floating_point():
                worst = max(worst, float((x - y).abs().max()) if x.numel() else 0.0)
            tensors += 1
        else:
            assert x == y, key
    return tensors, worst


@pytest.fixture(scope="module")
def small_state(sample_splits) -> dict[str, Any]:
    """A real training state, small: seed-softmax before its first step."""
    return build_run(small_config("seed-softmax", "train.steps=3"), sample_splits).state_dict()


def with_step(state: dict[str, Any], step: int) -> dict[str, Any]:
    return {**state, "step": step}


def test_save_load_round_trip(sample_splits, tmp_path):
    run = build_run(small_config("seed-mlp", "train.steps=3"), sample_splits)
    state = run.state_dict()
    path = save_checkpoint(tmp_path / "a.pt", state)
    loaded = load_checkpoint(path)
    assert loaded.step == 0 and loaded.header["format_version"] == ck.FORMAT_VERSION == 2
    assert loaded.config == run.config
    assert_same_state(state, loaded.state)
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_is_bit_equal(sample_splits, tmp_path, capsys):
    """1,000 steps in one go == 500 steps, save, load, 500 more: parameters, EMA shadows,
    optimizer, data order, RNG states and metrics all bit-equal."""
    config = small_config("seed-mlp", "train.steps=1000")
    whole = train(config, sample_splits, callbacks=[CheckpointCallback(tmp_path / "a", every=500)])
    half = set_value(config, "train.steps", 500)
    train(half, sample_splits, callbacks=[CheckpointCallback(tmp_path / "b", every=500)])
    saved = load_checkpoint(resolve_checkpoint(tmp_path / "b"))
    assert saved.step == 500
    resumed = train(
        config,
        sample_splits,
        resume_state=saved.state,
        callbacks=[CheckpointCallback(tmp_path / "b", every=500)],
    )
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-001000.pt").state
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "step-001000.pt").state
    count, worst = assert_same_state(a, b)
    assert whole.test is not None and resumed.test is not None
    assert whole.test.to_dict() == resumed.test.to_dict()
    assert whole.validation_accuracy == resumed.validation_accuracy
    with capsys.disabled():
        print(f"\nresume 1000 vs 500+500: {count} tensors bit-equal, max abs diff {worst}")
    assert count > 10 and worst == 0.0


def resume_halfway(config: Any, splits: Any, folder: Path) -> Any:
    """Train ``config`` (8 steps) into ``folder/a`` with a checkpoint every 4, resume from step 4
    into ``folder/b``, and assert that both end in the same state; the whole run's result."""
    whole = train(config, splits, callbacks=[CheckpointCallback(folder / "a", every=4)])
    four = load_checkpoint(folder / "a" / "checkpoints" / "step-000004.pt")
    train(
        config,
        splits,
        resume_state=four.state,
        callbacks=[CheckpointCallback(folder / "b", every=4)],
    )
    assert_same_state(
        load_checkpoint(folder / "a/checkpoints/step-000008.pt").state,
        load_checkpoint(folder / "b/checkpoints/step-000008.pt").state,
    )
    return whole


def test_resume_restores_dropout_rng(sample_splits, tmp_path):
    """LeNet's dropout draws from torch's generator: resuming must restore it too."""
    config = small_config(
        "lenet", "train.steps=8", "model.hidden=16", "train.eval_every=4", "train.log_every=4"
    )
    resume_halfway(config, sample_splits, tmp_path)


def test_batch_norm_statistics_are_saved_and_resumed(sample_splits, tmp_path):
    """The cnn's batch norm keeps running statistics outside its parameters: a checkpoint holds
    them, a resume restores them (bit-equal), and a model loaded from it predicts as trained."""
    config = small_config(
        "speedrun",
        "train.steps=8",
        "optim.warmup_steps=2",
        "model.hidden=4,8",
        "train.batch_size=32",
        "train.eval_every=4",
        "train.log_every=4",
    )
    whole = resume_halfway(config, sample_splits, tmp_path)
    four = load_checkpoint(tmp_path / "a" / "checkpoints" / "step-000004.pt")
    assert set(four.state["buffers"]) == {
        f"conv{i}.norm.{n}"
        for i in (1, 2)
        for n in ("running_mean", "running_var", "num_batches_tracked")
    }
    assert int(four.state["buffers"]["conv1.norm.num_batches_tracked"]) == 4
    assert four.state["buffers"]["conv2.norm.running_mean"].abs().sum() > 0
    model, _ = load_model(tmp_path / "a")
    assert int(model.conv1.norm.num_batches_tracked) == 8
    with torch.no_grad():
        predicted = model(sample_splits.test.images).argmax(1)
    right = int((predicted == sample_splits.test.labels).sum())
    assert whole.test is not None and right == round(whole.test.accuracy * whole.test.count)


def test_retention_keeps_last_k_and_best(sample_splits, tmp_path):
    config = small_config("seed-mlp", "train.steps=200", "train.eval_every=25")
    train(config, sample_splits, callbacks=[CheckpointCallback(tmp_path, every=50, keep=2)])
    assert [s for s, _ in step_checkpoints(tmp_path / "checkpoints")] == [150, 200]
    best = load_checkpoint(resolve_checkpoint(f"{tmp_path}:best"))
    metrics = best.state["metrics"]
    assert best.step == metrics["best_step"]
    assert metrics["validation_accuracy"] == metrics["best_validation_accuracy"]
    final = load_checkpoint(resolve_checkpoint(tmp_path))
    assert final.step == 200
    assert final.state["metrics"]["best_validation_accuracy"] == metrics["validation_accuracy"]


class Payload:
    """Unpickling this creates the marker file: the classic pickle code-execution attack."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"step": 1, "model": {}, "config": {}, "x": Payload(marker)}, buffer)
    crafted = tmp_path / "evil.pt"  # valid header and checksum: only weights_only stands guard
    crafted.write_bytes(b"".join(legacy.pack(buffer.getvalue(), {"step": 1})))
    with pytest.raises(CheckpointError, match=re.escape(str(crafted))):
        load_checkpoint(crafted)
    raw = tmp_path / "raw.pt"  # a bare torch.save pickle, no mnistlab header
    raw.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="not an mnistlab checkpoint"):
        load_checkpoint(raw)
    assert main(["eval", str(crafted)]) == 1
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it (so this test can fail).
    torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("version", [1, 2])
def test_truncated_and_bit_flipped_files_are_detected(tmp_path, small_state, version):
    good = ck.atomic_write(
        tmp_path / "good.pt",
        (ck.serialize if version == 2 else ck.serialize_v1)(with_step(small_state, 3)),
    )
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=f"{re.escape(str(truncated))} is truncated"):
        load_checkpoint(truncated)
    flipped = tmp_path / "flipped.pt"
    damaged = bytearray(data)
    damaged[-2000] ^= 0x10
    flipped.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match=f"{re.escape(str(flipped))} is damaged.*checksum"):
        load_checkpoint(flipped)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(empty)
    assert load_checkpoint(good).step == 3


def test_newer_format_says_so(tmp_path):
    from safetensors.torch import save

    old_layout = tmp_path / "future.pt"
    header = {"format_version": 99, "mnistlab_version": "9.0.0", "payload_bytes": 0}
    old_layout.write_bytes(ck.MAGIC + json.dumps(header).encode() + b"\n")
    new_layout = tmp_path / "future2.pt"
    info = json.dumps({"format_version": 3, "mnistlab_version": "9.0.0"})
    new_layout.write_bytes(save({}, metadata={"format": "mnistlab-checkpoint", "mnistlab": info}))
    for path, version in ((old_layout, 99), (new_layout, 3)):
        with pytest.raises(
            CheckpointError,
            match=rf"mnistlab 9\.0\.0 in checkpoint format {version}.*"
            r"reads formats 1 and 2: upgrade mnistlab",
        ):
            load_checkpoint(path)


def test_an_export_is_not_taken_for_a_checkpoint(tmp_path):
    from safetensors.torch import save

    path = tmp_path / "model.safetensors"
    path.write_bytes(save({"logits.weight": torch.zeros(10, 784)}, metadata={"x": "y"}))
    with pytest.raises(CheckpointError, match="a safetensors file but not an mnistlab checkpoint"):
        load_checkpoint(path)


def test_a_format_1_file_loads_and_resumes_as_its_format_2_copy(sample_splits, tmp_path):
    """A checkpoint written by the format-1 code (tests/fixtures, made at commit 33f3551)
    loads, re-saves in format 2 to the same bits, and both resume to the same state."""
    fixture = Path(__file__).parent / "fixtures" / "v1-seed-mlp-step4.pt"
    old = load_checkpoint(fixture)
    assert old.header["format_version"] == 1 and old.step == 4
    copy = load_checkpoint(save_checkpoint(tmp_path / "v2.pt", old.state))
    assert copy.header["format_version"] == 2 and copy.config == old.config
    assert_same_state(old.state, copy.state)
    config = set_value(old.config, "train.steps", 6)
    ends = []
    for i, ckpt in enumerate((old, copy)):
        folder = tmp_path / f"run{i}"
        train(
            config, sample_splits, resume_state=ckpt.state, callbacks=[CheckpointCallback(folder)]
        )
        ends.append(load_checkpoint(resolve_checkpoint(folder)).state)
    assert ends[0]["step"] == 6
    assert_same_state(ends[0], ends[1])


def test_a_format_2_file_is_plain_safetensors(tmp_path, small_state):
    """Readable without mnistlab: safetensors for the tensors, JSON for everything else."""
    from safetensors import safe_open

    path = save_checkpoint(tmp_path / "x.pt", with_step(small_state, 7))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        weight = f.get_tensor("model/logits.weight")
    assert meta["format"] == "mnistlab-checkpoint"
    assert json.loads(meta["mnistlab"])["step"] == 7
    skeleton = json.loads(meta["state"])
    assert skeleton["model"]["logits.weight"] == {"$tensor": "model/logits.weight"}
    assert skeleton["config"]["model"]["name"] == "softmax"
    assert torch.equal(weight, small_state["model"]["logits.weight"])
    assert b"\x80\x02" not in path.read_bytes()[:16]  # no pickle anywhere near the start


def test_second_ctrl_c_mid_save_leaves_previous_file(tmp_path, monkeypatch, small_state):
    path = save_checkpoint(tmp_path / "x.pt", with_step(small_state, 1))

    def interrupted(handle, data):
        handle.write(bytes(data)[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "_write_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, with_step(small_state, 2))
    assert load_checkpoint(path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


CHILD = """
import sys, time, torch
from mnistlab.io.checkpoint import fileformat as ck
path, marker = sys.argv[1], sys.argv[2]
def slow(handle, data):
    view = memoryview(data)
    handle.write(view[: len(view) // 2]); handle.flush()
    open(marker, "w").close()
    time.sleep(120)
state = ck.load_checkpoint(path).state
ck._write_all = slow
ck.save_checkpoint(path, {**state, "step": 2})
"""


@pytest.mark.slow
def test_kill_9_during_save_keeps_previous_checkpoint(tmp_path, small_state):
    folder = tmp_path / "run" / "checkpoints"
    target = save_checkpoint(folder / "step-000001.pt", with_step(small_state, 1))
    marker = tmp_path / "mid-save"
    env = {**os.environ, "PYTHONPATH": SRC}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(target), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "the child died before it began saving"
            assert time.monotonic() < deadline, "the child never began saving"
            time.sleep(0.05)
        child.kill()  # SIGKILL, half the new file written
    finally:
        child.wait(timeout=30)
    leftovers = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert leftovers, "the kill should have left the half-written temp file"
    ckpt = load_checkpoint(resolve_checkpoint(tmp_path / "run"))
    assert ckpt.path == target and ckpt.step == 1
    assert_same_state(ckpt.state, with_step(small_state, 1))


@pytest.mark.slow
def test_resume_cli_settings(sample_splits, tmp_path, monkeypatch, capsys):
    """--resume DIR needs no flags; unsafe changes are refused; auto finds the same config."""
    monkeypatch.chdir(tmp_path)
    base = [
        "train",
        "--dataset",
        "mnist-sample",
        "--quiet",
        "--set",
        "tracking.tensorboard=false",
        "--json",
        "--set",
        "train.steps=40",
        "--set",
        "train.eval_every=20",
        "--set",
        "model.hidden=32",
    ]
    assert main([*base, "--run-dir", "runs/first"]) == 0
    assert (
        main(["train", "--resume", "runs/first", "--set", "model.hidden=64"])
        == ConfigError.exit_code
    )
    assert "cannot change model.hidden when resuming" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "--resume",
                "runs/first",
                "--set",
                "train.steps=60",
                "--quiet",
                "--json",
                "--set",
                "tracking.tensorboard=false",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] == 60 and Path(out["run_dir"]) == Path("runs/first")
    assert main([*base, "--set", "train.steps=80", "--resume", "auto"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out.strip().splitlines()[-1])
    assert out["steps"] == 80 and Path(out["run_dir"]) == Path("runs/first")
    assert "resuming from runs/first/checkpoints/step-000060.pt" in captured.err


ENV = {**os.environ, "PYTHONPATH": SRC, "MNISTLAB_DATA": ""}
QUIET = ["--quiet", "--set", "tracking.tensorboard=false"]


def mnistlab_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mnistlab", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def interrupt_training(run_dir: Path, ready, signals: int, *settings: str) -> tuple[int, str]:
    """Start an endless `mnistlab train` on the sample, wait until ``ready()``, send SIGINT
    ``signals`` times back to back; return the exit status and what it printed on stderr.

    Nothing here depends on when the signals land: a second one may arrive during the save the
    first started, be merged with the first by the OS, or find the process gone; the contract
    (exit 130, every checkpoint whole) holds in each case."""
    cmd = [
        sys.executable,
        "-m",
        "mnistlab",
        "train",
        "--dataset",
        "mnist-sample",
        *QUIET,
        "--run-dir",
        str(run_dir),
        "--set",
        "train.steps=1000000",
        *settings,
    ]
    child = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready():  # training (and its signal handler) runs
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        for _ in range(signals):
            child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    return child.returncode, err


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    """SIGINT to `mnistlab train`: a checkpoint at the current step, exit 130, a resume hint;
    then `--resume DIR` finishes the run."""
    run_dir = tmp_path / "run"
    code, err = interrupt_training(
        run_dir,
        (run_dir / "checkpoints" / "best.pt").exists,
        1,
        "--checkpoint-every",
        "0",
        "--set",
        "train.eval_every=10",
    )
    assert code == 130, err
    assert f"mnistlab train --resume {run_dir}" in err
    steps = step_checkpoints(run_dir / "checkpoints")
    assert len(steps) == 1
    stopped = steps[0][0]
    assert f"training stopped at step {stopped} of 1000000" in err
    done = mnistlab_cli(
        "train", "--resume", str(run_dir), "--set", f"train.steps={stopped + 10}", "--json", *QUIET
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == stopped + 10


@pytest.mark.slow
def test_second_ctrl_c_exits_at_once_and_corrupts_nothing(tmp_path):
    """Two SIGINTs in quick succession while checkpoints are being written often: the process
    ends promptly, and every checkpoint left in the folder is whole and loadable."""
    run_dir = tmp_path / "run"
    code, err = interrupt_training(
        run_dir,
        lambda: bool(step_checkpoints(run_dir / "checkpoints")),
        2,
        "--checkpoint-every",
        "5",
        "--keep",
        "2",
        "--set",
        "train.eval_every=5",
    )
    assert code == 130, err
    assert "Traceback" not in err
    files = sorted((run_dir / "checkpoints").glob("*.pt"))
    assert files
    for path in files:
        assert load_checkpoint(path).step > 0
    # A save cut short leaves at most its hidden temp file, which the next run removes.
    leftovers = list((run_dir / "checkpoints").glob(".*.tmp"))
    resumed = mnistlab_cli(
        "train", "--resume", str(run_dir), "--set", "train.steps=1", *QUIET, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert not any(p.exists() for p in leftovers)
