"""Training: the objective's pieces, the moving average, metrics and the one training loop."""

from mnistlab.train.ema import EMA, ema_decay_at
from mnistlab.train.loop import (
    Callback,
    Run,
    TrainingInterrupted,
    TrainResult,
    build_run,
    decay_steps_for,
    resolve_device,
    train,
)
from mnistlab.train.metrics import EvalResult, confusion_matrix, summarize
from mnistlab.train.objective import (
    add_l2_gradient,
    cross_entropy,
    exponential_decay,
    l2_penalty,
    naive_cross_entropy,
)

__all__ = [
    "EMA",
    "Callback",
    "EvalResult",
    "Run",
    "TrainResult",
    "TrainingInterrupted",
    "add_l2_gradient",
    "build_run",
    "confusion_matrix",
    "cross_entropy",
    "decay_steps_for",
    "ema_decay_at",
    "exponential_decay",
    "l2_penalty",
    "naive_cross_entropy",
    "resolve_device",
    "summarize",
    "train",
]
