"""benchmarks/frameworks.py: the ports' settings are mnistlab's presets, their data is mnistlab's
data, each installed framework trains a few steps (the others skip, saying how to install them),
and the TF compat.v1 port follows mnistlab step by step from the same weights and batches."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import frameworks  # noqa: E402
from ports.common import PROGRAMS, NextBatch, load  # noqa: E402


@pytest.mark.parametrize("program", list(PROGRAMS))
def test_each_port_runs_mnistlab_presets_settings(program):
    from mnistlab.config import resolve

    p = PROGRAMS[program]
    c = resolve(p.preset)
    assert c.model.init == "normal"
    assert (p.hidden, p.init_std, p.bias_init) == (
        c.model.hidden,
        c.model.init_std,
        c.model.bias_init,
    )
    assert (p.lr, p.lr_decay, p.l2, p.ema) == (
        c.optim.lr,
        c.optim.lr_decay,
        c.optim.l2,
        c.optim.ema_decay,
    )
    assert c.optim.name == "sgd" and not c.optim.staircase and c.optim.decay_steps is None
    assert (p.steps, p.eval_every, p.batch_size) == (
        c.train.steps,
        c.train.eval_every,
        c.train.batch_size,
    )


def test_ports_read_the_same_numbers_as_mnistlab(sample_splits):
    folder, validation = frameworks.data_folder("mnist-sample", None)
    data = load(folder, validation)
    for ours, split in (
        ((data.train_x, data.train_y), sample_splits.train),
        ((data.val_x, data.val_y), sample_splits.validation),
        ((data.test_x, data.test_y), sample_splits.test),
    ):
        assert np.array_equal(ours[0], split.images.numpy())
        assert np.array_equal(ours[1], split.labels.numpy())


def test_next_batch_takes_the_rest_of_an_epoch_then_a_new_one():
    batches = NextBatch(10, 4, seed=0)
    seen = np.concatenate([batches() for _ in range(2)])
    crossing = batches()  # 2 from the first epoch, 2 from the second
    assert sorted(np.concatenate([seen, crossing[:2]])) == list(range(10))
    assert len(set(crossing[2:])) == 2


@pytest.mark.slow
@pytest.mark.parametrize("framework", frameworks.FRAMEWORKS)
def test_smoke_each_framework_trains_a_few_steps(framework, tmp_path, capsys):
    why = frameworks.missing(framework)
    if why:
        pytest.skip(f"{framework}: {why}")
    code = frameworks.main(
        ["--frameworks", framework, "--dataset", "mnist-sample", "--steps", "50"]
        + ["--out", str(tmp_path), "--threads", "1"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "frameworks.json").read_text())
    rows = {r["program"]: r for r in report["rows"]}
    assert set(rows) == {"softmax", "mlp"}
    for program, row in rows.items():
        assert row["steps"] == 50 and row["train_seconds"] > 0
        assert row["framework"] == framework and row["version"]
        # 50 steps on the sample: softmax regression is past 75% already. Keras's moving average
        # has no warm-up, so its averaged MLP is still mostly the initial weights: only > chance.
        floor = 0.2 if (framework, program) == ("keras", "mlp") else 0.75
        assert row["test_accuracy"] > floor, row
    assert (tmp_path / "frameworks.png").stat().st_size > 1000
    assert f"{framework:<10}" in out and "x mnistlab" in out


def test_a_missing_framework_is_skipped_with_its_install_line(monkeypatch, tmp_path, capsys):
    # Hide every module the port needs, whatever this machine has installed: a fresh venv with
    # only .[dev] has neither jax nor optax, a developer's may have both.
    real = frameworks.importlib.util.find_spec
    hidden = set(frameworks.NEEDS["jax"])
    monkeypatch.setattr(
        frameworks.importlib.util,
        "find_spec",
        lambda name, *a: None if name in hidden else real(name, *a),
    )
    code = frameworks.main(
        ["--frameworks", "jax", "--dataset", "mnist-sample", "--out", str(tmp_path)]
    )
    assert code == 0
    assert "skipped jax: jax is not installed: pip install 'mnistlab[compare]'" in (
        capsys.readouterr().out
    )
    assert json.loads((tmp_path / "frameworks.json").read_text())["skipped"]["jax"]


def test_the_gpu_column_runs_the_torch_ports_or_says_why_not(monkeypatch, tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: torch sees no CUDA device"):
            frameworks.main(["--device", "cuda", "--dataset", "mnist-sample"])
        return
    code = frameworks.main(  # pragma: no cover - a GPU machine
        ["--frameworks", "pytorch,jax", "--device", "cuda", "--dataset", "mnist-sample"]
        + ["--steps", "50", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "skipped jax: its port runs on the CPU only" in out
    rows = json.loads((tmp_path / "frameworks.json").read_text())["rows"]
    assert {r["device"] for r in rows} == {"cuda"}


@pytest.mark.slow
def test_parity_with_tensorflow_step_by_step(tmp_path, capsys):
    why = frameworks.missing("tf-v1")
    if why:
        pytest.skip(f"parity needs TensorFlow: {why}")
    code = frameworks.main(
        ["--parity", "--parity-steps", "60", "--snapshot-every", "20", "--dataset"]
        + ["mnist-sample", "--out", str(tmp_path), "--threads", "1"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    for report in json.loads((tmp_path / "parity.json").read_text()):
        assert report["pass"]
        assert report["loss"]["max_rel_diff"] < 1e-5
        assert report["lr"]["max_rel_diff"] < 1e-6
        assert report["weights"]["max_abs_diff"] < 1e-5
        assert report["test_accuracy"]["mnistlab"] == pytest.approx(
            report["test_accuracy"]["tf-v1"], abs=0.0021
        )
    assert "largest relative difference" in out
