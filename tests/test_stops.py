"""Ways a run stops that a person did not type: the terminal hanging up (SIGHUP), and a
divergence whose loss stays finite but absurd. Each one line, the right exit status, the last
good checkpoint kept."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from mnistlab.io.callbacks import Callback
from mnistlab.io.checkpoint import step_checkpoints

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")


class HangUpAt(Callback):
    """Sends this process SIGHUP at the first log boundary at or after ``step``."""

    def __init__(self, step: int):
        self.step, self.sent = step, False

    def on_log(self, run, record) -> None:
        if not self.sent and record.step >= self.step:
            self.sent = True
            os.kill(os.getpid(), signal.SIGHUP)


@pytest.fixture
def hangup_guard():
    """Before the fix SIGHUP's default action ended the process (pytest with it): a handler of
    the test's own turns an unhandled SIGHUP into a failure instead."""

    def unhandled(signum, frame):
        raise AssertionError("SIGHUP reached the default handler: training did not catch it")

    previous = signal.signal(signal.SIGHUP, unhandled)
    yield
    signal.signal(signal.SIGHUP, previous)


def test_sighup_stops_at_a_boundary_and_saves(tmp_path, sample_splits, hangup_guard):
    from mnistlab.io.checkpoint import CheckpointCallback
    from mnistlab.training import TrainingInterrupted, train

    from .conftest import small_config

    config = small_config(
        "seed-mlp", "train.steps=100000", "train.log_every=10", "checkpoint.every=0"
    )
    saver = CheckpointCallback(tmp_path)
    with pytest.raises(TrainingInterrupted) as stop:
        train(config, sample_splits, callbacks=[saver, HangUpAt(20)])
    assert stop.value.exit_code == 129 and stop.value.step == 20
    assert [step for step, _ in step_checkpoints(tmp_path / "checkpoints")] == [20]


def test_sighup_to_the_train_command_is_a_stop_not_an_error(
    tmp_path, monkeypatch, capsys, hangup_guard
):
    from mnistlab.apps import cli
    from mnistlab.io.console import ConsoleCallback

    monkeypatch.setattr(cli, "_quiet_shutdown", lambda: None)  # leave pytest's SIGINT alone
    hang_up = HangUpAt(30)
    monkeypatch.setattr(ConsoleCallback, "on_log", lambda self, run, rec: hang_up.on_log(run, rec))
    run = tmp_path / "run"
    status = cli.main(
        [
            "train",
            "--dataset",
            "mnist-sample",
            "--run-dir",
            str(run),
            "--quiet",
            "--no-tensorboard",
            "--set",
            "train.steps=100000",
            "--set",
            "train.log_every=10",
            "--set",
            "train.threads=1",
            "--checkpoint-every",
            "0",
        ]  # fmt: skip
    )
    err = capsys.readouterr().err
    assert status == 129, err
    assert "mnistlab: training stopped at step 30 of 100000" in err
    assert "error" not in err
    assert [s for s, _ in step_checkpoints(Path(run) / "checkpoints")] == [30]


def test_a_finite_but_absurd_loss_stops_like_a_nan(tmp_path, sample_splits):
    """speedrun at optim.lr=1000 reached a loss of 1e23 and a guess's accuracy with no NaN."""
    from mnistlab.errors import TrainingError
    from mnistlab.io.checkpoint import CheckpointCallback
    from mnistlab.training import train

    from .conftest import small_config

    config = small_config(
        "speedrun",
        "optim.lr=1000",
        "optim.warmup_steps=10",
        "train.steps=30",
        "train.log_every=1",
        "train.eval_every=1000",
        "checkpoint.every=1",
    )
    with pytest.raises(
        TrainingError, match=r"training diverged: the loss reached \S+ at step (\d+)"
    ):
        train(config, sample_splits, callbacks=[CheckpointCallback(tmp_path)])
    saved = [step for step, _ in step_checkpoints(tmp_path / "checkpoints")]
    assert saved and max(saved) < 30  # the checkpoints before it are kept, none after
    from mnistlab.io.checkpoint import load_checkpoint

    load_checkpoint(step_checkpoints(tmp_path / "checkpoints")[-1][1])  # and it is whole


def test_the_ceiling_leaves_a_resumed_run_room():
    from mnistlab.training.steps import check_finite_losses, loss_ceiling

    assert loss_ceiling(2.4, 10) == pytest.approx(240.0)
    resumed = loss_ceiling(0.03, 10)  # a resumed run starts low: held to log(10), not 0.03
    assert resumed == pytest.approx(100 * 2.302585, rel=1e-5)
    check_finite_losses([0.03, 5.0, 200.0], 100, resumed)  # a spike, not a divergence
