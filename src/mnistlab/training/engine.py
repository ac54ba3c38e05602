"""The engine contract, the plain autograd engine, and what the faster engines share.

An engine runs the steps of one stretch, between two boundaries of the loop (``training/loop.py``);
``training/steps.py`` picks which. Here: the contract (``Engine``); ``AutogradEngine``, which serves
every model, optimizer and parallel mode; and the pieces the faster engines (``training/dense.py``,
``training/captured.py``) share — the stretch's batch order on the device, the device tables a
captured step reads (``StepTables``), the side stream a capture warms up on, and the one line a
run prints when an optimisation falls back.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from mnistlab.training.ema import ema_decay_at
from mnistlab.training.objective import add_l2_gradient, learning_rate, loss_function

if TYPE_CHECKING:
    from mnistlab.training.state import Run


class Engine:
    """Runs ``n`` steps from ``run.step``, writing each step's data loss into ``losses[:n]``.
    It advances the batcher, the optimizer, the moving average and ``run.lr``; the loop advances
    ``run.step``."""

    name = "engine"

    def run(self, run: Run, n: int, losses: torch.Tensor) -> None:
        raise NotImplementedError

    def lr_at(self, run: Run, step: int) -> float:
        return learning_rate(step, run.config.optim, run.decay_steps, run.config.train.steps)


class AutogradEngine(Engine):
    name = "autograd"

    def __init__(self, run: Run):
        self.loss_fn = loss_function(run.config.train.loss)
        # L2 applies to weight matrices and kernels, never biases (the parameters with two or more dimensions).
        self.weights = [p for p in run.parameters() if p.ndim >= 2]

    def run(self, run: Run, n: int, losses: torch.Tensor) -> None:
        strategy, optimizer, l2 = run.strategy, run.optimizer, run.config.optim.l2
        images, labels = run.data.train.images, run.data.train.labels
        order = stretch_order(run, n)
        for i in range(n):
            run.lr = self.lr_at(run, run.step + i)
            for group in optimizer.param_groups:
                group["lr"] = run.lr
            idx = strategy.shard(order[i])
            x, y = images.index_select(0, idx), labels.index_select(0, idx)
            optimizer.zero_grad(set_to_none=True)
            loss = strategy.forward_backward(x, y, self.loss_fn)
            add_l2_gradient(self.weights, l2)
            optimizer.step()
            if run.ema is not None:
                run.ema.update()
            losses[i] = loss


def grad_of(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None
    return p.grad


def stretch_order(run: Run, n: int) -> torch.Tensor:
    """The next ``n`` batches of the data order as one ``[n, batch]`` tensor on the device (one
    copy per stretch instead of one per step; the batcher stays the single source of order)."""
    order = torch.stack([run.batcher.next_indices() for _ in range(n)])
    # A plain (synchronous) copy: the host buffer is free again when it returns, and the loop
    # waits for the device at the next boundary anyway.
    return order.to(run.data.train.images.device)


class StepTables:
    """What a captured step reads and writes instead of host values, for stretches of up to
    ``chunk`` steps: each step's batch indices (``order``), its learning rate and EMA weight
    (``rates``), its data loss (``losses``) and the step's place in the stretch (``counter``)."""

    def __init__(self, run: Run, chunk: int):
        device = run.strategy.device
        self.chunk = chunk
        self.order = torch.zeros(
            chunk, run.config.train.batch_size, dtype=torch.int64, device=device
        )
        self.rates = torch.zeros(chunk, 2, device=device)  # (learning rate, EMA weight) a step
        self.losses = torch.zeros(chunk, device=device)
        self.counter = torch.zeros(1, dtype=torch.int64, device=device)

    def fill(self, run: Run, n: int, lr_at: Callable[[Run, int], float]) -> list[float]:
        """The next ``n`` steps' tables (advancing the batcher); returns their learning rates."""
        assert n <= self.chunk, "a stretch is never longer than log_every"
        ema = run.ema
        lrs = [lr_at(run, run.step + i) for i in range(n)]
        weights = [0.0] * n
        if ema is not None:
            weights = [1.0 - ema_decay_at(ema.num_updates + i, ema.decay) for i in range(n)]
        self.order[:n].copy_(stretch_order(run, n))
        rows = [[lr, w] for lr, w in zip(lrs, weights, strict=True)]
        rows += [[0.0, 0.0]] * (self.chunk - n)
        self.rates.copy_(torch.tensor(rows, dtype=self.rates.dtype))
        self.counter.zero_()
        return lrs

    def rates_now(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's learning rate and EMA weight, as 0-dim device tensors."""
        lr, w = self.rates.index_select(0, self.counter).view(2).unbind()
        return lr, w

    def finish(self, run: Run, n: int, losses: torch.Tensor, lrs: list[float]) -> None:
        """After the stretch: its losses to the loop, the host's record of the rate and EMA."""
        losses[:n].copy_(self.losses[:n])
        run.lr = lrs[-1]
        if run.ema is not None:
            run.ema.num_updates += n


@contextlib.contextmanager
def side_stream(enabled: bool) -> Iterator[None]:
    """Run the body on a CUDA side stream, as torch asks of the warm-up before a capture (a
    plain block when ``enabled`` is false)."""
    if not enabled:
        yield
        return
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(side):
            yield
    finally:
        torch.cuda.current_stream().wait_stream(side)


def say_fallback(what: str, exc: Exception, instead: str) -> None:
    """One line on stderr: an optimisation of the step failed, and how the run goes on."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(f"mnistlab: {what} failed ({type(exc).__name__}: {first}); {instead}", file=sys.stderr)
