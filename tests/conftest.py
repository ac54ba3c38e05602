"""Shared fixtures: the bundled sample, the optional full MNIST (``$MNISTLAB_DATA`` or beside the
checkout), small configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mnistlab.config import Config, resolve

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def find_full_mnist() -> Path | None:
    """The folder of full MNIST the tests may use: ``$MNISTLAB_DATA`` (or its ``mnist/``) as
    mnistlab itself reads it, else ``../shared/data/mnist``; None when neither holds it."""
    env = os.environ.get("MNISTLAB_DATA")
    places = [Path(env).expanduser() / "mnist", Path(env).expanduser()] if env else []
    for folder in [*places, SHARED_MNIST]:
        if any(
            (folder / n).is_file()
            for n in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")
        ):
            return folder
    return None


# Read once at import, before the autouse fixture below hides MNISTLAB_DATA from each test.
FULL_MNIST = find_full_mnist()


@pytest.fixture(scope="session")
def sample_splits():
    """The bundled mnist-sample: 3,500 train / 500 validation / 1,000 test, on the CPU."""
    from mnistlab.data import load_splits

    return load_splits("mnist-sample")


@pytest.fixture(scope="session")
def shared_mnist() -> Path:
    """Full MNIST from $MNISTLAB_DATA or ../shared/data/mnist; skipped when neither has it."""
    if FULL_MNIST is None:
        pytest.skip(f"full MNIST is in neither $MNISTLAB_DATA nor {SHARED_MNIST}")
    return FULL_MNIST


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
        preset,
        None,
        # The CPU, also on a GPU machine: these tests pin CPU behaviour (bit-equal resume).
        [
            "train.steps=200",
            "train.eval_every=100",
            "train.log_every=50",
            "train.device=cpu",
            # Fixed, not chosen from the machine's load: results must not depend on it.
            "train.threads=1",
            *overrides,
        ],
    )
