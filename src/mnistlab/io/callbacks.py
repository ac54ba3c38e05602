"""The hooks the training loop calls, and what it hands them.

Defined here, below ``training``, so that checkpointing, tracking and console output (all in ``io``)
can implement them without importing the loop.

The contract (docs/architecture.md, "How the loop, engines and callbacks meet"): the loop performs
every operation that involves more than one rank — evaluations, the predictions a callback wants to
draw, the new-best decision, the stop flag, consolidating the state for a checkpoint — on every
rank, at the same boundaries, and hands the finished results to the callbacks.

Which rank gets which hook — one rule: ``wants()`` is asked on every rank (the loop must know on
every rank which collectives to run, so it must answer alike: it may read ``run.config``, nothing
rank-specific); every other hook runs on the main rank only (``run.is_main``; under pipeline
parallelism the rank that holds the loss), after the collectives it needs are done. So a callback
only writes and never calls the strategy, and in one process it sees every hook.

Hooks run at *boundaries* only (every ``train.log_every`` steps, every evaluation, every
checkpoint, the end): between two boundaries the steps run without the host in the way, on CUDA
as one replayed graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mnistlab.config import Config
    from mnistlab.data import Splits


@dataclass(frozen=True)
class Wants:
    """Extra results a callback asks the loop to compute (on every rank) at its boundaries."""

    raw_eval: bool = False
    """Validation accuracy of the raw weights too, beside the moving average's."""
    batch_accuracy: bool = False
    """At each log boundary, the current weights' accuracy on the last training batch."""
    misclassified: int = 0
    """At each evaluation, predictions for the first N validation images (for a grid of errors)."""
    checkpoints: bool = False
    """The consolidated training state at checkpoint boundaries (``on_checkpoint``)."""
    checkpoint_every: int = 0
    """Periodic checkpoints every N steps (0: only at the end, at a new best and on a stop)."""
    histogram_every: int = 0
    """Make every N-th step a boundary, so ``on_boundary`` sees its gradients."""

    def merge(self, other: Wants) -> Wants:
        return Wants(
            raw_eval=self.raw_eval or other.raw_eval,
            batch_accuracy=self.batch_accuracy or other.batch_accuracy,
            misclassified=max(self.misclassified, other.misclassified),
            checkpoints=self.checkpoints or other.checkpoints,
            checkpoint_every=_gcd_every(self.checkpoint_every, other.checkpoint_every),
            histogram_every=_gcd_every(self.histogram_every, other.histogram_every),
        )


def _gcd_every(a: int, b: int) -> int:
    import math

    return math.gcd(a, b) if a and b else (a or b)


@dataclass(frozen=True)
class LogRecord:
    """Every ``train.log_every`` steps (and at the last step)."""

    step: int
    loss: float
    """Mean total loss over the steps since the last record (data loss + L2 penalty)."""
    data_loss: float
    lr: float
    epoch: float
    ema_decay: float | None
    train_accuracy: float | None = None
    """Only when a callback wants ``batch_accuracy`` (main rank)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "loss": self.loss,
            "data_loss": self.data_loss,
            "lr": self.lr,
            "epoch": self.epoch,
            "ema_decay": self.ema_decay,
        }


@dataclass(frozen=True)
class Misclassified:
    """Validation images the moving average gets wrong (the first few of a pool)."""

    images: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray


@dataclass(frozen=True)
class EvalRecord:
    """After each validation (main rank's figures)."""

    step: int
    validation_accuracy: float
    """With the moving-average weights when there is a moving average."""
    validation_accuracy_raw: float | None
    best_validation_accuracy: float
    new_best: bool
    misclassified: Misclassified | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "validation_accuracy": self.validation_accuracy,
            "validation_accuracy_raw": self.validation_accuracy_raw,
            "best_validation_accuracy": self.best_validation_accuracy,
        }


class RunView(Protocol):
    """What a callback may read of the loop's run (``mnistlab.training.Run`` satisfies it)."""

    config: Config
    data: Splits
    step: int
    lr: float
    last_loss: float
    validation_accuracy: float | None
    best_validation_accuracy: float | None
    best_step: int | None

    @property
    def is_main(self) -> bool: ...

    @property
    def uses_ema(self) -> bool: ...

    def named_parameters(self) -> Sequence[tuple[str, torch.Tensor]]:
        """This rank's parameters (its shards under tensor or pipeline parallelism)."""
        ...


class ResultView(Protocol):
    """The final figures (``mnistlab.training.TrainResult``)."""

    steps: int

    def summary(self) -> dict[str, Any]: ...


class Callback:
    """Base class: every hook does nothing. ``wants`` is asked on every rank; the hooks run on
    the main rank only (see the module docstring)."""

    def wants(self, run: RunView) -> Wants:
        return Wants()

    def on_start(self, run: RunView) -> None:
        """Before the first step (after a resume, at the resumed step)."""

    def on_boundary(self, run: RunView, steps_done: int) -> None:
        """After each stretch of steps, ``steps_done`` of them, before the records of this
        boundary; parameters and their ``.grad`` are those of the last step."""

    def on_log(self, run: RunView, record: LogRecord) -> None:
        """Every ``train.log_every`` steps."""

    def on_eval(self, run: RunView, record: EvalRecord) -> None:
        """After each validation."""

    def on_checkpoint(
        self, run: RunView, state: dict[str, Any], *, periodic: bool, best: bool
    ) -> None:
        """The consolidated state (main rank only; only for callbacks that want checkpoints):
        at every ``checkpoint.every`` steps and the last (``periodic``), at a new best
        validation accuracy (``best``), and before an interrupt stops the run."""

    def before_checkpoint(self, run: RunView) -> None:
        """Just before the callbacks that want checkpoints are handed this step's state (every
        callback, main rank): make what was written up to this step durable."""

    def on_end(self, run: RunView, result: ResultView) -> None:
        """After the final test evaluation."""

    def on_interrupt(self, run: RunView) -> None:
        """Ctrl-C or SIGTERM stopped training at a boundary, after the state was saved."""

    def on_failure(self, run: RunView, error: BaseException) -> None:
        """Training raised (divergence, a bug); the last good checkpoint must stay as it is."""
