"""mnistlab: MNIST-family classifiers trained exactly as the classic TensorFlow programs did.

The package is layered (see docs/architecture.md): ``config`` < ``data``, ``models`` < ``parallel``, ``io``
< ``train`` < ``apps``. Nothing heavy runs at import time.

The Python API (``mnistlab.api``, README "Python API")::

    result = mnistlab.train("seed-mlp", steps=2000, dataset="mnist-sample")
    mnistlab.evaluate(result.model)
    model = mnistlab.load("runs/my-run")
"""

from __future__ import annotations

import sys
import types
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "load", "train"]


class _TrainPackage(types.ModuleType):
    """``mnistlab.train`` is both the training subpackage and the API's ``train()``: calling the
    module calls ``mnistlab.api.train``, while ``mnistlab.train.loop`` and ``from mnistlab.train
    import train`` keep meaning the subpackage and its loop."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from mnistlab.api import train

        return train(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds a subpackage onto its parent with setattr once it is loaded:
        # that is the moment to make ``mnistlab.train`` callable, however it was first imported.
        if name == "train" and isinstance(value, types.ModuleType):
            value.__class__ = _TrainPackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name == "train":  # first use as a function: import the subpackage (made callable above)
        import importlib

        return importlib.import_module("mnistlab.train")
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")


def load(run_or_checkpoint: Any, *, raw_weights: bool = False) -> Any:
    """The model of a run folder, ``RUN:best`` or a checkpoint file (``mnistlab.api.load``)."""
    from mnistlab.api import load as _load

    return _load(run_or_checkpoint, raw_weights=raw_weights)


def evaluate(model: Any, split: str = "test", **options: Any) -> Any:
    """A model's accuracy, per-class accuracy and confusion matrix (``mnistlab.api.evaluate``)."""
    from mnistlab.api import evaluate as _evaluate

    return _evaluate(model, split, **options)
