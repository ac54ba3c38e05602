"""`mnistlab eval` and `mnistlab export`: tables, JSON, plots, and exports that match PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mnistlab.apps.cli import main
from mnistlab.config import from_dict
from mnistlab.io.checkpoint import CheckpointCallback, load_model
from mnistlab.models import build_model
from mnistlab.training import train

from .conftest import small_config


@pytest.fixture(scope="module")
def run_dir(sample_splits, tmp_path_factory) -> Path:
    """A short seed-mlp run on the bundled sample, with checkpoints."""
    folder = tmp_path_factory.mktemp("run")
    train(
        small_config("seed-mlp", "train.steps=200"),
        sample_splits,
        callbacks=[CheckpointCallback(folder, every=100)],
    )
    return folder


def test_eval_table(run_dir, capsys):
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "step 200, EMA weights) on mnist-sample test" in out
    assert "accuracy" in out and "confusion matrix (rows: true class" in out
    assert len([line for line in out.splitlines() if line[:1].isdigit()]) == 20  # 2 x 10 classes


def test_eval_json_matches_the_model(run_dir, sample_splits, capsys):
    assert main(["eval", f"{run_dir}:best", "--split", "validation", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "validation" and result["count"] == len(sample_splits.validation)
    assert result["weights"] == "ema"
    assert sum(map(sum, result["confusion"])) == result["count"]
    model, ckpt = load_model(result["checkpoint"])
    with torch.no_grad():
        predicted = model(sample_splits.validation.images).argmax(1)
    expected = float((predicted == sample_splits.validation.labels).float().mean())
    assert result["accuracy"] == pytest.approx(expected)
    assert result["accuracy"] == ckpt.state["metrics"]["best_validation_accuracy"]
    assert main(["eval", str(run_dir), "--json", "--raw-weights"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == "raw"


def test_eval_plot(run_dir, tmp_path, capsys):
    from PIL import Image

    png = tmp_path / "eval.png"
    assert main(["eval", str(run_dir), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as img:
        assert img.width > 600 and img.height > 300


def test_safetensors_round_trip(run_dir, tmp_path, sample_splits):
    from safetensors import safe_open

    path = tmp_path / "model.safetensors"
    assert main(["export", str(run_dir), "--format", "safetensors", "-o", str(path)]) == 0
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config = from_dict(json.loads(meta["config"]))
    rebuilt = build_model(config.model).eval()
    rebuilt.load_state_dict(tensors)
    model, ckpt = load_model(run_dir)
    shadows = ckpt.state["ema"]["shadows"]
    assert all(torch.equal(tensors[k], shadows[k]) for k in shadows) and meta["weights"] == "ema"
    with torch.no_grad():
        assert torch.equal(rebuilt(sample_splits.test.images), model(sample_splits.test.images))


@pytest.mark.slow
def test_onnx_matches_pytorch(run_dir, tmp_path, sample_splits, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "-o", str(path)]) == 0
    images = sample_splits.test.images[:1000]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    model, _ = load_model(run_dir)
    with torch.no_grad():
        expected = model(images)
    diff = float((torch.from_numpy(logits) - expected).abs().max())
    with capsys.disabled():
        print(
            f"\nONNX vs PyTorch on {len(images)} test digits: max abs logit difference {diff:.3g}"
        )
    assert logits.shape == (1000, 10) and diff < 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_matches_pytorch(run_dir, sample_splits):
    out = Path(run_dir) / "export"
    assert main(["export", f"{run_dir}:best", "--format", "torchscript"]) == 0
    (path,) = out.glob("*.pt")
    scripted = torch.jit.load(str(path))
    model, _ = load_model(f"{run_dir}:best")
    with torch.no_grad():
        torch.testing.assert_close(
            scripted(sample_splits.test.images), model(sample_splits.test.images), rtol=0, atol=1e-6
        )


def test_eval_of_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


@pytest.mark.slow
def test_cnn_evaluates_and_exports_with_its_batch_norm_statistics(sample_splits, tmp_path, capsys):
    """The speedrun's cnn: `eval` and the exports use batch norm's running statistics, so each
    reproduces the accuracy training reported."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    config = small_config(
        "speedrun", "train.steps=60", "optim.warmup_steps=6", "train.batch_size=64"
    )
    result = train(config, sample_splits, callbacks=[CheckpointCallback(tmp_path, every=30)])
    assert main(["eval", str(tmp_path), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert result.test is not None and evaluated["accuracy"] == result.test.accuracy
    assert result.test.accuracy > 0.5  # 60 steps of a cnn on the sample, well above chance
    model, _ = load_model(tmp_path)
    images = sample_splits.test.images[:500]
    with torch.no_grad():
        expected = model(images)
    onnx = tmp_path / "model.onnx"
    assert main(["export", str(tmp_path), "--format", "onnx", "-o", str(onnx)]) == 0
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    assert float((torch.from_numpy(logits) - expected).abs().max()) < 1e-4
    from safetensors.torch import load_file

    saved = tmp_path / "model.safetensors"
    assert main(["export", str(tmp_path), "--format", "safetensors", "-o", str(saved)]) == 0
    tensors = load_file(str(saved))
    assert int(tensors["conv1.norm.num_batches_tracked"]) == 60
    rebuilt = build_model(config.model).eval()
    rebuilt.load_state_dict(tensors)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), expected, rtol=0, atol=1e-6)
