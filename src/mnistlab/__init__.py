"""mnistlab: MNIST-family classifiers trained exactly as the classic TensorFlow programs did.

The package is layered (see docs/architecture.md): ``config`` < ``data``, ``models`` < ``parallel``,
``io`` < ``training`` < ``session`` < ``api``, ``apps``. Nothing heavy runs at import time: the
Python API below is imported on first use.

The Python API (``mnistlab.api``; README "From Python")::

    result = mnistlab.train("seed-mlp", steps=2000, dataset="mnist-sample")
    report = mnistlab.evaluate(result.model)
    model = mnistlab.load("runs/my-run")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Evaluation",
    "History",
    "Model",
    "Prediction",
    "TrainingResult",
    "__version__",
    "evaluate",
    "load",
    "train",
]

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the names come from __getattr__
    from mnistlab.api import (
        Evaluation,
        History,
        Model,
        Prediction,
        TrainingResult,
        evaluate,
        load,
        train,
    )

_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    """``mnistlab.train``, ``mnistlab.load``, ... are ``mnistlab.api``'s own functions and classes
    (so ``help()``, ``inspect.signature`` and Jupyter show their parameters and docs), imported
    the first time one is asked for."""
    if name in _API:
        from mnistlab import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
