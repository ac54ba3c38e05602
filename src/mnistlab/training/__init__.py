"""Training: the objective's pieces, the moving average, metrics and the one training loop."""

from mnistlab.io.callbacks import Callback
from mnistlab.training.ema import EMA, ema_decay_at
from mnistlab.training.loop import TrainingInterrupted, due, train
from mnistlab.training.metrics import EvalResult, confusion_matrix, summarize
from mnistlab.training.objective import (
    add_l2_gradient,
    cross_entropy,
    exponential_decay,
    l2_penalty,
    learning_rate,
    naive_cross_entropy,
)
from mnistlab.training.state import Run, TrainResult, build_run, decay_steps_for, resolve_device

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
    "due",
    "ema_decay_at",
    "exponential_decay",
    "l2_penalty",
    "learning_rate",
    "naive_cross_entropy",
    "resolve_device",
    "summarize",
    "train",
]
