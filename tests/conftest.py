"""Shared fixtures: the bundled sample, the optional full MNIST beside the checkout, small configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnistlab.config import Config, resolve

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def sample_splits():
    """The bundled mnist-sample: 3,500 train / 500 validation / 1,000 test, on the CPU."""
    from mnistlab.data import load_splits

    return load_splits("mnist-sample")


@pytest.fixture(scope="session")
def shared_mnist() -> Path:
    """Full MNIST from ../shared/data/mnist; the test is skipped when this checkout has none."""
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"full MNIST is not beside this checkout ({SHARED_MNIST} is absent)")
    return SHARED_MNIST


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or fill the user's real cache, nor find datasets in system folders, in tests."""
    root = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "cache"))
    monkeypatch.setenv("MNISTLAB_SYSTEM_DATA", str(root / "system"))
    monkeypatch.delenv("MNISTLAB_DATA", raising=False)


def small_config(preset: str = "seed-mlp", *overrides: str) -> Config:
    """A preset shortened for tests, with nothing written unless asked."""
    return resolve(
        preset, None, ["train.steps=200", "train.eval_every=100", "train.log_every=50", *overrides]
    )
