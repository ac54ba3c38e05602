"""The one training loop. Every preset and every parallel mode runs through ``train``.

The loop is plain calls: learning rate, batch indices, ``strategy.forward_backward``, L2 gradient,
optimizer step, moving average; every ``log_every`` steps one host sync to check the losses and
report them; every ``eval_every`` steps validation accuracy with the averaged weights. Checkpoints,
TensorBoard and progress bars are callbacks the loop calls at those points.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mnistlab.config import Config, to_dict
from mnistlab.data import Batcher, Split, Splits
from mnistlab.errors import TrainingError
from mnistlab.io.callbacks import Callback
from mnistlab.models import build_model
from mnistlab.parallel import Strategy
from mnistlab.train.ema import EMA
from mnistlab.train.metrics import EvalResult, summarize
from mnistlab.train.objective import add_l2_gradient, exponential_decay, l2_penalty, loss_function
from mnistlab.train.optim import build_optimizer


class TrainingInterrupted(TrainingError):
    """Ctrl-C or SIGTERM stopped training at a step boundary (after callbacks saved the state)."""

    exit_code = 130

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


@dataclass
class TrainResult:
    steps: int
    test: EvalResult | None
    validation_accuracy: float | None
    best_validation_accuracy: float | None
    wall_seconds: float
    train_seconds: float
    samples_per_second: float
    dataset: str
    data_dir: str
    used_ema: bool

    def summary(self) -> dict[str, Any]:
        return {
            "test_accuracy": self.test.accuracy if self.test else None,
            "validation_accuracy": self.validation_accuracy,
            "best_validation_accuracy": self.best_validation_accuracy,
            "steps": self.steps,
            "wall_seconds": round(self.wall_seconds, 3),
            "train_seconds": round(self.train_seconds, 3),
            "samples_per_second": round(self.samples_per_second, 1),
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "ema_weights": self.used_ema,
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrainingError(
            f"train.device {name!r} is not a device (use auto, cpu or cuda)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device asks for CUDA but torch sees no CUDA device")
    return device


def decay_steps_for(config: Config, num_train: int) -> int:
    """TensorFlow's ``decay_steps = training examples / batch size`` unless set explicitly."""
    if config.optim.decay_steps is not None:
        return config.optim.decay_steps
    return max(1, num_train // config.train.batch_size)


@dataclass
class Run:
    """Everything one training run holds; callbacks read it, checkpoints save its state."""

    config: Config
    data: Splits
    strategy: Strategy
    callbacks: list[Callback]
    ema: EMA | None = None
    batcher: Batcher | None = None
    step: int = 0
    lr: float = 0.0
    last_loss: float = math.nan
    validation_accuracy: float | None = None
    best_validation_accuracy: float | None = None
    best_step: int | None = None
    stop_requested: bool = False
    want_raw_eval: bool = False
    decay_steps: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    resume_hint: str = ""
    """Set by the checkpoint callback on interrupt: where the state went and how to go on."""

    @property
    def is_main(self) -> bool:
        return self.strategy.is_main

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        assert self.strategy.optimizer is not None
        return self.strategy.optimizer

    def parameters(self) -> list[torch.Tensor]:
        return [p for _, p in self.strategy.local_parameters()]

    def evaluate(self, split: Split, *, use_ema: bool = True) -> EvalResult | None:
        """Accuracy on ``split`` (collective; ``None`` on ranks other than the main one)."""
        params = self.ema.shadows if (use_ema and self.ema is not None) else None
        predicted = self.strategy.predict(split.images, params)
        if predicted is None or not self.is_main:
            return None
        return summarize(predicted, split.labels, self.data.num_classes)

    # -- exact resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole training state, consolidated and mode-independent (collective)."""
        assert self.batcher is not None
        params = self.parameters()
        return {
            "step": self.step,
            "model": self.strategy.full_state(params),
            "ema": None
            if self.ema is None
            else {
                "num_updates": self.ema.num_updates,
                "shadows": self.strategy.full_state(self.ema.shadows),
            },
            "optimizer": self.strategy.optimizer_state(),
            "data": self.batcher.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": [s for s in torch.cuda.get_rng_state_all()]
                if torch.cuda.is_available()
                else [],
                "numpy": _numpy_rng_state(),
            },
            "metrics": {
                "validation_accuracy": self.validation_accuracy,
                "best_validation_accuracy": self.best_validation_accuracy,
                "best_step": self.best_step,
                "last_loss": self.last_loss if math.isfinite(self.last_loss) else None,
            },
            "config": to_dict(self.config),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        assert self.batcher is not None
        self.step = int(state["step"])
        for param, saved in zip(
            self.parameters(), self.strategy.local_state(state["model"]), strict=True
        ):
            param.copy_(saved)
        if self.ema is not None and state.get("ema"):
            self.ema.num_updates = int(state["ema"]["num_updates"])
            for shadow, saved in zip(
                self.ema.shadows, self.strategy.local_state(state["ema"]["shadows"]), strict=True
            ):
                shadow.copy_(saved)
        self.strategy.load_optimizer_state(state["optimizer"])
        self.batcher.load_state_dict(state["data"])
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if rng.get("numpy") is not None:
            _set_numpy_rng_state(rng["numpy"])
        metrics = state.get("metrics", {})
        self.validation_accuracy = metrics.get("validation_accuracy")
        self.best_validation_accuracy = metrics.get("best_validation_accuracy")
        self.best_step = metrics.get("best_step")
        last_loss = metrics.get("last_loss")
        self.last_loss = math.nan if last_loss is None else float(last_loss)


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _set_numpy_rng_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached"]))


@contextlib.contextmanager
def _stop_on_signals(run: Run) -> Iterator[None]:
    """First Ctrl-C / SIGTERM asks the loop to stop at the next step boundary (and save);
    a second Ctrl-C raises ``KeyboardInterrupt`` at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask_stop(signum: int, _frame: object) -> None:
        if run.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        run.stop_requested = True

    previous = {s: signal.signal(s, ask_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def build_run(
    config: Config,
    data: Splits,
    strategy: Strategy | None = None,
    callbacks: Sequence[Callback] = (),
) -> Run:
    """Model, optimizer, moving average and data order for ``config``, placed by ``strategy``."""
    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    strategy = strategy or Strategy(resolve_device(t.device))
    torch.manual_seed(t.seed)
    np.random.seed(t.seed % 2**32)
    model = build_model(config.model, num_classes=data.num_classes, seed=t.seed)
    strategy.prepare(model, lambda params: build_optimizer(params, config.optim))
    run = Run(config=config, data=data, strategy=strategy, callbacks=list(callbacks))
    if config.optim.ema_decay > 0:
        run.ema = EMA(run.parameters(), config.optim.ema_decay)
    # The data order has its own generator, so dropout draws never shift the batches.
    run.batcher = Batcher(len(data.train), t.batch_size, seed=t.seed + 1)
    run.decay_steps = decay_steps_for(config, len(data.train))
    return run


def _check_losses(run: Run, losses: torch.Tensor, first_step: int) -> float:
    """Stop with the exact step when a loss in the window is NaN or infinite; return the mean."""
    values = losses.tolist()
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            raise TrainingError(
                f"training diverged: the loss became {value} at step {first_step + offset + 1}; "
                "lower optim.lr (or use train.loss=stable); checkpoints written before it are kept"
            )
    return sum(values) / len(values)


def train(
    config: Config,
    data: Splits,
    strategy: Strategy | None = None,
    callbacks: Sequence[Callback] = (),
    resume_state: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``config`` on ``data``; returns the final figures (test accuracy with EMA weights)."""
    started = time.perf_counter()
    run = build_run(config, data, strategy, callbacks)
    if resume_state is not None:
        run.load_state_dict(resume_state)
    try:
        with _stop_on_signals(run):
            train_seconds = _loop(run)
    except TrainingInterrupted:
        raise
    except BaseException as exc:
        for cb in run.callbacks:
            cb.on_failure(run, exc)
        raise
    return _finish(run, started, train_seconds)


def _loop(run: Run) -> float:
    config, strategy = run.config, run.strategy
    t, o = config.train, config.optim
    assert run.batcher is not None
    device = strategy.device
    train_x, train_y = run.data.train.images, run.data.train.labels
    loss_fn = loss_function(t.loss)
    # L2 applies to weight matrices and kernels, never biases (``models.weight_names``).
    weights = [p for _, p in strategy.local_parameters() if p.ndim >= 2]
    window = torch.zeros(t.log_every, device=device)
    window_start = run.step
    strategy.train_mode(True)
    for cb in run.callbacks:
        cb.on_start(run)
    begun = time.perf_counter()
    start_step = run.step
    while run.step < t.steps:
        step = run.step
        run.lr = exponential_decay(step, o.lr, o.lr_decay, run.decay_steps, o.staircase)
        for group in run.optimizer.param_groups:
            group["lr"] = run.lr
        idx = strategy.shard(run.batcher.next_indices())
        if idx.device != train_x.device:
            idx = idx.to(train_x.device, non_blocking=True)
        x, y = train_x.index_select(0, idx), train_y.index_select(0, idx)
        run.optimizer.zero_grad(set_to_none=True)
        loss = strategy.forward_backward(x, y, loss_fn)
        add_l2_gradient(weights, o.l2)
        run.optimizer.step()
        if run.ema is not None:
            run.ema.update()
        window[step - window_start] = loss
        run.step = step + 1

        if run.step - window_start == t.log_every or run.step == t.steps:
            mean = _check_losses(
                run, strategy.reduce_losses(window[: run.step - window_start]), window_start
            )
            run.last_loss = (
                mean + float(strategy.global_penalty(l2_penalty(weights, o.l2))) if o.l2 else mean
            )
            window_start = run.step
            record = {
                "step": run.step,
                "loss": run.last_loss,
                "data_loss": mean,
                "lr": run.lr,
                "epoch": run.batcher.epoch,
                "ema_decay": run.ema.current_decay if run.ema else None,
            }
            for cb in run.callbacks:
                cb.on_log(run, record)
        if run.step % t.eval_every == 0 or run.step == t.steps:
            _validate(run)
        for cb in run.callbacks:
            cb.on_step(run)
        if run.step < t.steps and strategy.all_true(run.stop_requested):
            for cb in run.callbacks:
                cb.on_interrupt(run)
            hint = f"; {run.resume_hint}" if run.resume_hint else ""
            raise TrainingInterrupted(
                run.step, f"training stopped at step {run.step} of {t.steps}{hint}"
            )
    elapsed = time.perf_counter() - begun
    run.history.append({"train_steps": run.step - start_step, "train_seconds": elapsed})
    return elapsed


def _validate(run: Run) -> None:
    run.strategy.train_mode(False)
    result = run.evaluate(run.data.validation, use_ema=True)
    raw = None
    if run.want_raw_eval and run.ema is not None:
        raw = run.evaluate(run.data.validation, use_ema=False)
    run.strategy.train_mode(True)
    if result is None:
        return
    run.validation_accuracy = result.accuracy
    if run.best_validation_accuracy is None or result.accuracy > run.best_validation_accuracy:
        run.best_validation_accuracy = result.accuracy
        run.best_step = run.step
    record = {
        "step": run.step,
        "validation_accuracy": result.accuracy,
        "validation_accuracy_raw": raw.accuracy
        if raw
        else (result.accuracy if run.ema is None else None),
        "best_validation_accuracy": run.best_validation_accuracy,
    }
    for cb in run.callbacks:
        cb.on_eval(run, record)


def _finish(run: Run, started: float, train_seconds: float) -> TrainResult:
    run.strategy.train_mode(False)
    test = run.evaluate(run.data.test, use_ema=True)
    steps_run = run.history[-1]["train_steps"] if run.history else 0
    result = TrainResult(
        steps=run.step,
        test=test,
        validation_accuracy=run.validation_accuracy,
        best_validation_accuracy=run.best_validation_accuracy,
        wall_seconds=time.perf_counter() - started,
        train_seconds=train_seconds,
        samples_per_second=steps_run * run.config.train.batch_size / train_seconds
        if train_seconds
        else 0.0,
        dataset=run.data.name,
        data_dir=str(run.data.directory),
        used_ema=run.ema is not None,
    )
    for cb in run.callbacks:
        cb.on_end(run, result)
    return result
