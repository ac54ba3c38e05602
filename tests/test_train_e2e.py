"""End to end: train the classic programs on real digits and check what they reach.

The bundled mnist-sample (3,500 train / 500 validation / 1,000 test genuine MNIST digits) runs on
any machine; the full-MNIST checks skip when ../shared/data/mnist is not beside the checkout.
"""

from __future__ import annotations

import json

import pytest
import torch

from mnistlab.apps.cli import main
from mnistlab.config import resolve
from mnistlab.errors import TrainingError
from mnistlab.training import train

from .conftest import small_config


def test_seed_softmax_on_sample(sample_splits):
    result = train(resolve("seed-softmax"), sample_splits)
    assert result.steps == 1000
    assert result.test is not None and result.test.accuracy >= 0.85
    assert sum(map(sum, result.test.confusion)) == 1000


@pytest.mark.slow
def test_short_seed_mlp_on_sample(sample_splits):
    config = resolve("seed-mlp", None, ["train.steps=600", "train.eval_every=200"])
    result = train(config, sample_splits)
    assert result.used_ema
    assert result.test is not None and result.test.accuracy >= 0.88
    assert result.validation_accuracy is not None and result.validation_accuracy >= 0.88


def test_training_is_reproducible(sample_splits):
    config = small_config("seed-mlp", "train.steps=50")
    a, b = train(config, sample_splits), train(config, sample_splits)
    assert a.test is not None and b.test is not None
    assert a.test.confusion == b.test.confusion


def test_the_original_naive_loss_diverges_loudly(sample_splits):
    # The notes' program: -sum(y * log(softmax)) over the batch, lr 0.5. It reaches NaN (as it
    # does in TensorFlow); mnistlab stops and names the step instead of reporting 9.8%.
    config = resolve("seed-softmax", None, ["train.loss=naive", "train.log_every=10"])
    with pytest.raises(
        TrainingError, match=r"diverged: the loss became (nan|inf|-inf) at step \d+"
    ):
        train(config, sample_splits)


def test_cli_json_last_line(capsys, tmp_path):
    code = main(
        [
            "train",
            "--preset",
            "seed-softmax",
            "--dataset",
            "mnist-sample",
            "--set",
            "train.steps=100",
            "--run-dir",
            str(tmp_path / "run"),
            "--json",
            "--quiet",
        ]
    )
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    for key in (
        "test_accuracy",
        "validation_accuracy",
        "steps",
        "wall_seconds",
        "samples_per_second",
        "dataset",
        "data_dir",
    ):
        assert key in summary
    assert summary["steps"] == 100 and summary["dataset"] == "mnist-sample"
    assert (tmp_path / "run" / "config.toml").exists()


def test_cli_falls_back_to_the_sample_when_mnist_is_missing(capsys, tmp_path):
    code = main(
        [
            "train",
            "--preset",
            "seed-softmax",
            "--set",
            "train.steps=20",
            "--set",
            "data.download=false",
            "--run-dir",
            str(tmp_path / "run"),
            "--json",
        ]
    )
    assert code == 0
    out = capsys.readouterr()
    assert "training on the bundled mnist-sample" in out.err
    assert json.loads(out.out.strip().splitlines()[-1])["dataset"] == "mnist-sample"


def test_cli_insists_on_mnist_when_asked(capsys, tmp_path):
    code = main(
        [
            "train",
            "--dataset",
            "mnist",
            "--set",
            "data.download=false",
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "t10k-labels-idx1-ubyte" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "optim.learning_rate=0.2"], "did you mean 'optim.lr'"),
        (["--set", "train.steps=many"], "train.steps expects an integer"),
        (["--dataset", "mnsit"], "did you mean 'mnist'"),
    ],
)
def test_cli_bad_settings_are_one_line(capsys, tmp_path, args, message):
    code = main(["train", "--run-dir", str(tmp_path / "r"), *args])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_full_mnist_softmax_and_mlp(shared_mnist):
    from mnistlab.data import load_splits

    data = load_splits("mnist", shared_mnist)
    assert (len(data.train), len(data.validation), len(data.test)) == (55_000, 5_000, 10_000)
    soft = train(resolve("seed-softmax"), data)
    assert soft.test is not None and soft.test.accuracy >= 0.91
    mlp = train(resolve("seed-mlp", None, ["train.steps=1500"]), data)
    assert mlp.test is not None and mlp.test.accuracy >= 0.95


@pytest.mark.slow
def test_validation_split_is_the_first_training_images(shared_mnist):
    from mnistlab.data import load_arrays, load_splits, locate

    data = load_splits("mnist", shared_mnist)
    raw = load_arrays(locate("mnist", shared_mnist))
    first = torch.from_numpy(raw["train_images"][:5000].reshape(5000, -1)).float() / 255
    assert torch.equal(data.validation.images, first)
    assert data.validation.labels.tolist() == raw["train_labels"][:5000].tolist()
