"""The models that ship inside mnistlab (``pretrained:NAME``): the files are the ones the
manifest records (sha256, size), they load everywhere a checkpoint is taken, they score their
recorded test accuracy on the full datasets (skipped without them), and (slow) the recorded
command trains a model that scores it again."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mnistlab
from mnistlab import pretrained
from mnistlab.errors import CheckpointError
from mnistlab.io.checkpoint import load_model, resolve_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import make_pretrained  # noqa: E402

MODELS = pretrained.manifest()
FASHION = Path("/usr/share/datasets/fashion-mnist")


def data_dir(dataset: str, request: pytest.FixtureRequest) -> Path:
    """Full MNIST (the ``shared_mnist`` fixture) or Fashion-MNIST from Debian's package;
    skipped when it is not here."""
    if dataset == "mnist":
        return request.getfixturevalue("shared_mnist")
    if not any(FASHION.glob("train-images-idx3-ubyte*")):
        pytest.skip(f"{dataset} is not in {FASHION} (apt-get install dataset-fashion-mnist)")
    return FASHION


def test_the_three_models_are_listed():
    assert {"cnn", "mlp", "fashion"} <= set(MODELS)
    assert MODELS["cnn"]["preset"] == "speedrun" and MODELS["mlp"]["preset"] == "seed-mlp"
    assert MODELS["fashion"]["dataset"] == "fashion-mnist"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_file_matches_the_manifest(name):
    entry = MODELS[name]
    path = resolve_checkpoint(f"pretrained:{name}")
    assert path == pretrained.FOLDER / entry["file"]
    data = path.read_bytes()
    assert len(data) == entry["bytes"]
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert entry["seed"] == 1 and entry["command"].startswith("MNISTLAB_DATA=DIR mnistlab train")
    assert f"--preset {entry['preset']}" in entry["command"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shipped_model_scores_its_recorded_accuracy(name, request):
    entry = MODELS[name]
    folder = data_dir(entry["dataset"], request)
    accuracy = make_pretrained.test_accuracy(f"pretrained:{name}", entry["dataset"], folder)
    assert accuracy == pytest.approx(entry["test_accuracy"], abs=1e-9)


def test_pretrained_loads_through_every_door(capsys):
    model = mnistlab.load("pretrained:cnn")
    assert model.config.preset == "speedrun" and model.class_names[3] == "3"
    module, ckpt = load_model("pretrained:mlp")
    assert ckpt.config.model.name == "mlp"
    assert mnistlab.load("pretrained:fashion").class_names[0] != "0"  # clothes, not digits


def test_an_unknown_pretrained_name_lists_the_models():
    with pytest.raises(CheckpointError, match="there are pretrained:cnn") as info:
        resolve_checkpoint("pretrained:lenet")
    assert "pretrained:mlp" in str(info.value)


def test_a_missing_file_says_how_to_rebuild(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "FOLDER", tmp_path)
    with pytest.raises(CheckpointError, match="make_pretrained.py --only cnn"):
        resolve_checkpoint("pretrained:cnn")


def test_the_package_data_ships_the_models():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"pretrained/*.pt"' in text and '"pretrained/manifest.json"' in text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_the_recorded_command_reproduces_the_accuracy(name, request, tmp_path):
    """Trains for minutes: the speedrun about 2, seed-mlp about 6 on 2 busy cores. The same
    code and machine give the same digits; another processor may move the last ones (its
    kernels sum in another order), hence the 0.2-point band."""
    entry = MODELS[name]
    folder = data_dir(entry["dataset"], request)
    args = entry["command"].split()
    assert args[:2] == ["MNISTLAB_DATA=DIR", "mnistlab"]
    run = tmp_path / "run"
    args = [str(run) if a == "RUN" else a for a in args[2:]]
    env = dict(os.environ, MNISTLAB_DATA=str(folder))
    done = subprocess.run(
        [sys.executable, "-m", "mnistlab", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["steps"] == entry["steps"]
    assert abs(figures["test_accuracy"] - entry["test_accuracy"]) <= 0.002


# -- weights-only files: what ships, and what Model.save(weights_only=True) writes --------------
def test_the_shipped_files_are_weights_only_and_small():
    from mnistlab.io.checkpoint import load_checkpoint

    for name, entry in MODELS.items():
        state = load_checkpoint(resolve_checkpoint(f"pretrained:{name}")).state
        assert state["kind"] == "weights" and state["weights"] == entry["weights"], name
        assert not {"optimizer", "data", "rng", "ema"} & set(state), name
    assert MODELS["cnn"]["bytes"] < 100_000  # the speedrun cnn's 30k weights, float32
    assert MODELS["mlp"]["bytes"] < 1_700_000  # 784-500-10: one set of weights, not two


def test_a_weights_only_file_cannot_be_resumed(tmp_path, capsys):
    from mnistlab.apps.cli import main

    code = main(["train", "--resume", "pretrained:cnn", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code != 0
    assert "weights only" in err and "cannot be resumed" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing was opened for it


def test_raw_weights_of_an_averaged_weights_only_file_are_refused():
    with pytest.raises(CheckpointError, match="only its moving average's weights"):
        mnistlab.load("pretrained:mlp", raw_weights=True)
    assert mnistlab.load("pretrained:cnn", raw_weights=True).info["ema_weights"] is False


def test_model_save_weights_only_round_trips(tmp_path, sample_splits):
    import numpy as np

    result = mnistlab.train("seed-mlp", steps=30, dataset="mnist-sample", hidden=16, quiet=True)
    full = result.model.save(tmp_path / "full.pt")
    small = result.model.save(tmp_path / "small.pt", weights_only=True)
    assert small.stat().st_size < full.stat().st_size / 2
    digits = sample_splits.test.images[:64].reshape(-1, 28, 28).numpy()
    again = mnistlab.load(small)
    assert again.info["ema_weights"] is True
    np.testing.assert_array_equal(
        again.probabilities(digits), mnistlab.load(full).probabilities(digits)
    )
    from mnistlab.io.checkpoint import load_checkpoint

    resaved = load_checkpoint(again.save(tmp_path / "again.pt", weights_only=True)).state
    first = load_checkpoint(small).state  # the same weights again (the header's time differs)
    assert resaved["kind"] == "weights" and resaved.keys() == first.keys()
    for name, tensor in first["model"].items():
        assert torch.equal(resaved["model"][name], tensor), name
