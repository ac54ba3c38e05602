"""The one training loop. Every preset and every parallel mode runs through ``train``.

Training is cut into stretches between *boundaries*: every ``train.log_every`` steps (the losses
are checked and reported, and the stop flag is agreed on), every ``train.eval_every`` steps
(validation), every checkpoint, the last step. An engine (picked in ``training/steps.py``) runs
each stretch without the host waiting on the device; at a boundary the loop does every
collective operation itself, on every rank in the same order — evaluations, the predictions
callbacks asked for, the new-best decision, the stop flag, the consolidated state for a
checkpoint — and hands the results to the callbacks, which only write (``io/callbacks.py``). So
ranks stay in step whatever a user switches on.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from functools import reduce
from typing import Any

import torch

from mnistlab.config import Config
from mnistlab.data import Splits
from mnistlab.errors import TrainingError
from mnistlab.io.callbacks import (
    Callback,
    EvalRecord,
    LogRecord,
    Misclassified,
    Wants,
)
from mnistlab.parallel import Strategy
from mnistlab.training.engine import Engine
from mnistlab.training.metrics import summarize
from mnistlab.training.objective import l2_penalty
from mnistlab.training.state import Run, TrainResult, build_run
from mnistlab.training.steps import check_finite_losses, loss_ceiling, select_engine


class TrainingInterrupted(TrainingError):
    """Ctrl-C, SIGTERM or SIGHUP stopped training at a boundary (after the state was saved)."""

    exit_code = 130

    def __init__(self, step: int, message: str, *, signum: int | None = None):
        super().__init__(message)
        self.step = step
        self.signum = signum
        # The shell's convention: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM,
        # 129 for SIGHUP).
        if signum is not None:
            self.exit_code = 128 + int(signum)

    def with_hint(self, hint: str) -> TrainingInterrupted:
        """The same stop, its message followed by ``hint`` (where the state went, how to go on:
        the code that assembled the run knows both)."""
        return TrainingInterrupted(self.step, f"{self}; {hint}", signum=self.signum)


STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
"""The signals that stop training at the next boundary, with a checkpoint."""


def due(step: int, every: int, total: int) -> bool:
    """Whether ``step`` (steps done) is an ``every``-step boundary; the last step always is."""
    return step == total or (every > 0 and step % every == 0)


def _next_boundary(step: int, total: int, intervals: Sequence[int]) -> int:
    """The first step after ``step`` where some interval falls, or ``total``."""
    nxt = total
    for every in intervals:
        if every > 0:
            nxt = min(nxt, (step // every + 1) * every)
    return nxt


@contextlib.contextmanager
def _stop_on_signals(run: Run) -> Iterator[None]:
    """First Ctrl-C / SIGTERM / SIGHUP asks the loop to stop at the next boundary (and save);
    a second Ctrl-C raises ``KeyboardInterrupt`` at once. SIGHUP (the terminal or the SSH
    session that started the run went away) is a stop like SIGTERM: left to Python's default
    it ended the process at once, with no checkpoint and no word."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask_stop(signum: int, _frame: object) -> None:
        if run.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        run.stop_requested = True
        run.stop_signal = run.stop_signal or signum

    previous = {s: signal.signal(s, ask_stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train(
    config: Config,
    data: Splits,
    strategy: Strategy | None = None,
    callbacks: Sequence[Callback] = (),
    resume_state: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``config`` on ``data`` (on any device: it moves to the training device); returns the
    final figures (test accuracy with the moving-average weights)."""
    started = time.perf_counter()
    run = build_run(config, data, strategy, callbacks)
    if resume_state is not None:
        run.load_state_dict(resume_state)
    loop = _Loop(run)
    try:
        with _stop_on_signals(run):
            train_seconds = loop.run()
    except TrainingInterrupted:
        raise
    except BaseException as exc:
        for cb in run.hooks:
            cb.on_failure(run, exc)
        lost = run.strategy.lost_peer(exc)  # a peer died: one line, not gloo's traceback
        if lost is not None:
            raise lost from None
        raise
    return loop.finish(started, train_seconds)


class _Loop:
    def __init__(self, run: Run):
        self.run_ = run
        self.wants: Wants = reduce(Wants.merge, (cb.wants(run) for cb in run.callbacks), Wants())
        self.engine: Engine
        self.engine, self.fallback_reason = select_engine(run)
        # L2 applies to weight matrices and kernels, never biases (the parameters with two or more dimensions).
        self.weights = [p for p in run.parameters() if p.ndim >= 2]
        self.last_checkpoint_step: int | None = None
        self.steps_run = 0
        self.ceiling = math.inf  # set from this run's first logged loss (steps.loss_ceiling)

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> float:
        run, t = self.run_, self.run_.config.train
        strategy = run.strategy
        w = self.wants
        intervals = [t.log_every, t.eval_every, w.histogram_every]
        if w.checkpoints:
            intervals.append(w.checkpoint_every)
        losses = torch.zeros(max(1, t.log_every), device=strategy.device)
        window: list[torch.Tensor] = []
        window_start = run.step
        strategy.train_mode(True)
        for cb in run.hooks:
            cb.on_start(run)
        begun = time.perf_counter()
        start_step = run.step
        while run.step < t.steps:
            # Log lines fall on round steps, also after a resume from an odd step.
            end = _next_boundary(run.step, t.steps, intervals)
            n = end - run.step
            self.engine.run(run, n, losses)
            window.append(losses[:n].clone())
            run.step = end
            for cb in run.hooks:
                cb.on_boundary(run, n)
            if due(run.step, t.log_every, t.steps):
                self._log(torch.cat(window), window_start)
                window, window_start = [], run.step
                stop = run.step < t.steps and strategy.all_true(run.stop_requested)
            else:
                stop = False
            new_best = False
            if due(run.step, t.eval_every, t.steps):
                new_best = self._validate()
            if w.checkpoints:
                periodic = due(run.step, w.checkpoint_every, t.steps)
                if periodic or new_best:
                    self._checkpoint(periodic=periodic, best=new_best)
            if stop:
                self._interrupt()
        self.steps_run = run.step - start_step
        return time.perf_counter() - begun

    # -- boundaries ------------------------------------------------------------------------------
    def _log(self, losses: torch.Tensor, first_step: int) -> None:
        run = self.run_
        o = run.config.optim
        values = run.strategy.reduce_losses(losses).tolist()  # the one host sync per log_every
        if self.ceiling == math.inf and values and math.isfinite(values[0]):
            self.ceiling = loss_ceiling(values[0], run.data.num_classes)
        check_finite_losses(values, first_step, self.ceiling)
        mean = sum(values) / len(values) if values else math.nan
        penalty = (
            float(run.strategy.global_penalty(l2_penalty(self.weights, o.l2))) if o.l2 else 0.0
        )
        run.last_loss = mean + penalty
        accuracy = self._batch_accuracy() if self.wants.batch_accuracy else None
        record = LogRecord(
            step=run.step,
            loss=run.last_loss,
            data_loss=mean,
            lr=run.lr,
            epoch=run.batcher.epoch,
            ema_decay=run.ema.current_decay if run.ema else None,
            train_accuracy=accuracy,
        )
        for cb in run.hooks:
            cb.on_log(run, record)

    def _batch_accuracy(self) -> float | None:
        """The current weights' accuracy on the last batch trained on (collective). A batch that
        crossed an epoch's end is represented by its part in the new epoch."""
        run = self.run_
        batcher = run.batcher
        end = batcher.index_in_epoch
        idx = batcher.perm[max(0, end - batcher.batch_size) : end]
        if idx.numel() == 0:
            return None
        train = run.data.train
        idx = idx.to(train.images.device)
        predicted = run.predict(train.images.index_select(0, idx), use_ema=False)
        if predicted is None:
            return None
        labels = train.labels.index_select(0, idx).to(predicted.device)
        return float((predicted == labels).float().mean())

    def _validate(self) -> bool:
        """Validation on every rank; returns the new-best decision, agreed by all ranks."""
        run, w = self.run_, self.wants
        val = run.data.validation
        run.strategy.train_mode(False)
        try:
            predicted = run.predict(val.images, use_ema=True)
            raw = run.evaluate(val, use_ema=False) if (w.raw_eval and run.ema) else None
        finally:
            run.strategy.train_mode(True)
        pool = min(w.misclassified, len(val))
        new_best = False
        record = None
        if predicted is not None:  # main rank
            result = summarize(predicted, val.labels, run.data.num_classes)
            run.validation_accuracy = result.accuracy
            best = run.best_validation_accuracy
            new_best = best is None or result.accuracy > best
            if new_best:
                run.best_validation_accuracy, run.best_step = result.accuracy, run.step
            assert run.best_validation_accuracy is not None
            record = EvalRecord(
                step=run.step,
                validation_accuracy=result.accuracy,
                validation_accuracy_raw=raw.accuracy
                if raw
                else (result.accuracy if run.ema is None else None),
                best_validation_accuracy=run.best_validation_accuracy,
                new_best=new_best,
                misclassified=_misclassified(val.images[:pool], val.labels[:pool], predicted[:pool])
                if pool
                else None,
            )
        new_best = bool(run.strategy.broadcast_object(new_best))
        if record is not None:
            for cb in run.hooks:
                cb.on_eval(run, record)
        return new_best

    def _checkpoint(self, *, periodic: bool, best: bool) -> None:
        run = self.run_
        state = run.state_dict()  # collective: every rank, same step
        if periodic:
            self.last_checkpoint_step = run.step
        if not run.is_main:
            return
        for cb in run.hooks:  # records up to this step first, then the state that ends it
            cb.before_checkpoint(run)
        for cb in run.hooks:
            if cb.wants(run).checkpoints:
                cb.on_checkpoint(run, state, periodic=periodic, best=best)

    def _interrupt(self) -> None:
        run, t = self.run_, self.run_.config.train
        if self.wants.checkpoints and self.last_checkpoint_step != run.step:
            self._checkpoint(periodic=True, best=False)
        for cb in run.hooks:
            cb.on_interrupt(run)
        raise TrainingInterrupted(
            run.step, f"training stopped at step {run.step} of {t.steps}", signum=run.stop_signal
        )

    # -- the end ---------------------------------------------------------------------------------
    def finish(self, started: float, train_seconds: float) -> TrainResult:
        run = self.run_
        run.strategy.train_mode(False)
        test = run.evaluate(run.data.test, use_ema=True)
        result = TrainResult(
            steps=run.step,
            test=test,
            validation_accuracy=run.validation_accuracy,
            best_validation_accuracy=run.best_validation_accuracy,
            wall_seconds=time.perf_counter() - started,
            train_seconds=train_seconds,
            samples_per_second=self.steps_run * run.config.train.batch_size / train_seconds
            if train_seconds
            else 0.0,
            dataset=run.data.name,
            data_dir=str(run.data.directory),
            used_ema=run.ema is not None,
            engine=self.engine.name,
            engine_note=self.fallback_reason,
        )
        for cb in run.hooks:
            cb.on_end(run, result)
        return result


def _misclassified(
    images: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor
) -> Misclassified:
    labels = labels.to(predicted.device)
    wrong = (predicted != labels).nonzero().flatten()
    return Misclassified(
        images=images.index_select(0, wrong.to(images.device)).cpu().numpy(),
        labels=labels[wrong].cpu().numpy(),
        predicted=predicted[wrong].cpu().numpy(),
    )


__all__ = [
    "Callback",
    "Run",
    "TrainResult",
    "TrainingInterrupted",
    "build_run",
    "due",
    "summarize",
    "train",
]
