"""One training run's state: model and optimizer (placed by a strategy), moving average, data
order, figures so far; its consolidated ``state_dict`` for checkpoints and exact resume.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mnistlab.config import Config, to_dict
from mnistlab.data import Batcher, Split, Splits
from mnistlab.errors import CheckpointError
from mnistlab.io.callbacks import Callback
from mnistlab.io.checkpoint.trust import num_classes
from mnistlab.models import build_model
from mnistlab.parallel import Strategy
from mnistlab.parallel.device import resolve_device, set_tf32
from mnistlab.training.ema import EMA
from mnistlab.training.metrics import EvalResult, summarize
from mnistlab.training.optim import build_optimizer


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
    engine: str = ""
    """How the steps ran (``autograd``, ``fused``, ``fused+tables+cuda-graphs`` …)."""
    engine_note: str | None = None
    """Why the run stepped through autograd, when it did."""

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
            "engine": self.engine,
            **({"engine_note": self.engine_note} if self.engine_note else {}),
        }


def decay_steps_for(config: Config, num_train: int) -> int:
    """TensorFlow's ``decay_steps = training examples / batch size`` unless set explicitly."""
    if config.optim.decay_steps is not None:
        return config.optim.decay_steps
    return max(1, num_train // config.train.batch_size)


@dataclass
class Run:
    """Everything one training run holds; callbacks read it (``io.callbacks.RunView``),
    checkpoints save its state."""

    config: Config
    data: Splits
    strategy: Strategy
    callbacks: list[Callback]
    batcher: Batcher
    decay_steps: int
    ema: EMA | None = None
    step: int = 0
    lr: float = 0.0
    last_loss: float = math.nan
    validation_accuracy: float | None = None
    best_validation_accuracy: float | None = None
    best_step: int | None = None
    stop_requested: bool = False
    stop_signal: int | None = None
    dense_route: str | None = None
    """The fused dense step's route (``training/routes.py``), kept in checkpoints for the resume."""

    @property
    def is_main(self) -> bool:
        return self.strategy.is_main

    @property
    def hooks(self) -> list[Callback]:
        """The callbacks whose hooks run here: all of them on the main rank, none elsewhere
        (``io/callbacks.py``: ``wants`` is asked on every rank, every hook runs on the main one)."""
        return self.callbacks if self.is_main else []

    @property
    def uses_ema(self) -> bool:
        return self.ema is not None

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        assert self.strategy.optimizer is not None
        return self.strategy.optimizer

    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return self.strategy.local_parameters()

    def parameters(self) -> list[torch.Tensor]:
        return [p for _, p in self.strategy.local_parameters()]

    def predict(self, images: torch.Tensor, *, use_ema: bool = True) -> torch.Tensor | None:
        """Class predictions (collective; ``None`` on ranks other than the main one)."""
        params = self.ema.shadows if (use_ema and self.ema is not None) else None
        predicted = self.strategy.predict(images, params)
        return predicted if self.is_main else None

    def evaluate(self, split: Split, *, use_ema: bool = True) -> EvalResult | None:
        """Accuracy on ``split`` (collective; ``None`` on ranks other than the main one)."""
        predicted = self.predict(split.images, use_ema=use_ema)
        if predicted is None:
            return None
        return summarize(predicted, split.labels, self.data.num_classes)

    # -- exact resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole training state, consolidated and mode-independent (collective)."""
        params = self.parameters()
        return {
            "step": self.step,
            "model": self.strategy.full_state(params),
            "buffers": self.strategy.full_buffers(),
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
            # The CPU thread count chosen for this run: kernels such as oneDNN's convolutions
            # sum in a different order with another count, so a resume keeps it.
            "threads": torch.get_num_threads(),
            # The fused dense step's route (its products sum in their own order): the same.
            "dense_route": self.dense_route,
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``, a ``Run.state_dict()`` that ``load_checkpoint`` checked."""
        saved_classes = num_classes(state["model"])
        if saved_classes != self.data.num_classes:
            raise CheckpointError(
                f"cannot resume: the checkpoint's model tells {saved_classes} classes apart but "
                f"{self.data.name} has {self.data.num_classes}; resume with the data the run "
                "was trained on"
            )
        self.step = int(state["step"])
        if not self.config.train.threads and state.get("threads"):
            torch.set_num_threads(min(int(state["threads"]), cpu_threads()))
        self.dense_route = state.get("dense_route")
        for param, saved in zip(
            self.parameters(), self.strategy.local_state(state["model"]), strict=True
        ):
            param.copy_(saved)
        if state.get("buffers"):
            self.strategy.load_buffers(state["buffers"])
        if self.ema is not None and state.get("ema"):
            self.ema.num_updates = int(state["ema"]["num_updates"])
            for shadow, saved in zip(
                self.ema.shadows, self.strategy.local_state(state["ema"]["shadows"]), strict=True
            ):
                shadow.copy_(saved)
        self.strategy.load_optimizer_state(state["optimizer"])
        try:
            self.batcher.load_state_dict(state["data"])
        except ValueError as exc:  # the saved order is for another dataset or split
            raise CheckpointError(
                f"cannot resume: {exc}; resume with the data the run was trained on"
            ) from None
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            # One state a device: a run saved on more devices than this machine has restores
            # the ones it has (a device without a saved state keeps its own).
            for index, saved in enumerate(rng["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(saved, index)
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


def cpu_threads() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_cores(samples: int = 5, interval: float = 0.01) -> int:
    """Other tasks running right now (``procs_running`` of /proc/stat, less this process; the
    least of a few samples, so a passing blip does not count); 0 where it cannot be read."""
    seen = []
    for i in range(samples):
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("procs_running"):
                        seen.append(int(line.split()[1]) - 1)
                        break
        except (OSError, ValueError):
            return 0
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, min(seen)) if seen else 0


def auto_threads() -> int:
    """Threads for ``train.threads=0``: the cores this process may use, less those other jobs
    hold now. A parallel kernel waits for its slowest thread, so one thread sharing a core with
    a busy job stalls every kernel of the step; fewer threads than cores degrade gently instead."""
    return max(1, cpu_threads() - busy_cores())


def build_run(
    config: Config,
    data: Splits,
    strategy: Strategy | None = None,
    callbacks: Sequence[Callback] = (),
) -> Run:
    """Model, optimizer, moving average and data order for ``config``, placed by ``strategy``;
    the data moves to the training device here, whatever device it was loaded on. A strategy's
    share of the run (``Strategy.worker_config``: async workers each run part of the updates) is
    applied here, so ``Run.config`` is what this process trains and callers never apply it."""
    if strategy is not None:
        config = strategy.worker_config(config, len(data.train))
    t = config.train
    threads = min(t.threads, cpu_threads()) if t.threads else auto_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    strategy = strategy or Strategy(resolve_device(t.device))
    set_tf32(t.tf32)
    torch.manual_seed(t.seed)
    np.random.seed(t.seed % 2**32)
    model = build_model(
        config.model, num_classes=data.num_classes, seed=t.seed, input_shape=data.input_shape
    )
    strategy.prepare(model, lambda params: build_optimizer(params, config.optim))
    run = Run(
        config=config,
        data=data.to(strategy.device),
        strategy=strategy,
        callbacks=list(callbacks),
        # The data order has its own generator, so dropout draws never shift the batches.
        batcher=Batcher(len(data.train), t.batch_size, seed=t.seed + 1),
        decay_steps=decay_steps_for(config, len(data.train)),
    )
    if config.optim.ema_decay > 0:
        run.ema = EMA(run.parameters(), config.optim.ema_decay)
    return run
