"""The loop's boundaries: where stretches end, and that log lines fall on round steps whatever
step a run resumes from."""

from __future__ import annotations

import json

from mnistlab.config import set_value
from mnistlab.io.checkpoint import CheckpointCallback, load_checkpoint
from mnistlab.io.tracking import TrackingCallback
from mnistlab.training import due, train
from mnistlab.training.loop import _next_boundary

from .conftest import small_config


def test_boundaries():
    assert _next_boundary(0, 1000, [100, 500]) == 100
    assert _next_boundary(250, 1000, [100, 500]) == 300
    assert _next_boundary(450, 1000, [100, 500, 0]) == 500
    assert _next_boundary(990, 1000, [100]) == 1000
    assert _next_boundary(0, 30, [100]) == 30
    assert due(500, 500, 1000) and due(1000, 0, 1000) and not due(250, 500, 1000)


def test_log_lines_after_a_resume_fall_on_round_steps(sample_splits, tmp_path):
    config = small_config("seed-mlp", "train.steps=500", "train.log_every=100")
    half = set_value(config, "train.steps", 250)
    train(half, sample_splits, callbacks=[CheckpointCallback(tmp_path / "ck", every=250)])
    saved = load_checkpoint(tmp_path / "ck" / "checkpoints" / "step-000250.pt")
    train(
        config,
        sample_splits,
        resume_state=saved.state,
        callbacks=[TrackingCallback(tmp_path / "run", tensorboard=False)],
    )
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    logged = [r["step"] for r in map(json.loads, lines) if "loss" in r]
    assert logged == [300, 400, 500]
