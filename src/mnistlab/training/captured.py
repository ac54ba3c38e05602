"""Any model's autograd step captured as a CUDA graph (LeNet, the speedrun's cnn).

``TabledAutogradEngine`` reads each step's batch, learning rate and EMA weight from device tables
(``StepTables``), so the whole step — forward, backward, L2, the optimizer's update, the moving
average — can be captured once on CUDA and replayed for every step. On the CPU it runs the same
step uncaptured, which is how the test suite checks it against ``AutogradEngine``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mnistlab.parallel import Strategy
from mnistlab.training.engine import Engine, StepTables, grad_of, say_fallback, side_stream
from mnistlab.training.objective import add_l2_gradient, loss_function

if TYPE_CHECKING:
    from mnistlab.training.state import Run


class TabledAutogradEngine(Engine):
    """Any model's step through autograd in one process, with every per-step value read from
    device tables (``StepTables``), so that on CUDA the whole step — forward, backward, L2, the
    optimizer's update, the moving average — is captured once as a CUDA graph and replayed for
    each step: a step of LeNet or the speedrun's cnn costs the host one replay instead of a
    launch from Python for each of its kernels.

    The update is written here with foreach kernels and a learning rate that lives on the
    device (``torch.optim``'s SGD reads it on the host, which a graph would freeze at its first
    value). It is torch's SGD, momentum and Nesterov exactly, in the optimizer's own momentum
    buffers (so checkpoints and a later resume by another engine see them), except that
    ``lr · update`` is rounded before it is subtracted. Dropout's random masks and batch norm's
    running statistics are captured too (torch gives a graph its own offsets in the generator's
    stream, so every replay draws new masks)."""

    name = "autograd+tables"

    def __init__(self, run: Run, *, graphs: bool):
        self.loss_fn = loss_function(run.config.train.loss)
        self.params = run.parameters()
        self.weights = [p for p in self.params if p.ndim >= 2]
        self.l2 = float(run.config.optim.l2)
        o = run.config.optim
        self.momentum = o.momentum if o.name in ("momentum", "nesterov") else 0.0
        self.nesterov = o.name == "nesterov"
        self.tables = StepTables(run, max(1, run.config.train.log_every))
        self.run_ = run
        self.graphs = graphs
        self._graph: torch.cuda.CUDAGraph | None = None
        self._buffers: list[torch.Tensor] = []
        self.name = "autograd+tables" + ("+cuda-graphs" if graphs else "")

    def _momentum_buffers(self) -> list[torch.Tensor]:
        """The optimizer's momentum buffers, made (zero) where its first step has not run yet:
        ``0 · m + g`` is the ``g`` torch's first step copies, so nothing changes."""
        optimizer = self.run_.optimizer
        buffers = []
        for p in self.params:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        return buffers

    def _step(self) -> None:
        run, t = self.run_, self.tables
        strategy = run.strategy
        idx = t.order.index_select(0, t.counter).view(-1)
        x = run.data.train.images.index_select(0, idx)
        y = run.data.train.labels.index_select(0, idx)
        loss = strategy.forward_backward(x, y, self.loss_fn)
        add_l2_gradient(self.weights, self.l2)
        lr, ema_weight = t.rates_now()
        with torch.no_grad():
            grads = [grad_of(p) for p in self.params]
            held = [p.detach() for p in self.params]
            if self.momentum:
                # torch's SGD: buf = m·buf + g; the step is buf, or g + m·buf for Nesterov.
                torch._foreach_mul_(self._buffers, self.momentum)
                torch._foreach_add_(self._buffers, grads)
                if self.nesterov:
                    torch._foreach_add_(grads, self._buffers, alpha=self.momentum)
                else:
                    grads = self._buffers
            torch._foreach_sub_(held, torch._foreach_mul(grads, lr))
            if run.ema is not None:
                run.ema.update_with(ema_weight)
            t.losses.index_copy_(0, t.counter, loss.view(1))
            t.counter.add_(1)

    def _state(self) -> list[torch.Tensor]:
        """Everything a step changes, for the warm-up to put back."""
        run = self.run_
        model = run.strategy.model
        assert model is not None
        shadows = run.ema.shadows if run.ema is not None else []
        return [*self.params, *self._buffers, *shadows, *model.buffers()]

    def _capture(self) -> None:
        """Warm up on a side stream (as capture requires), put every tensor and the random
        generator back as they were, then capture one step (recording runs nothing)."""
        state = self._state()
        saved = [s.detach().clone() for s in state]
        rng = torch.cuda.get_rng_state()
        try:
            with side_stream(True):
                for _ in range(3):
                    self.tables.counter.zero_()
                    for p in self.params:
                        p.grad = None
                    self._step()
        finally:
            torch.cuda.synchronize()
            with torch.no_grad():
                for s, v in zip(state, saved, strict=True):
                    s.copy_(v)
            torch.cuda.set_rng_state(rng)
        for p in self.params:  # the graph's backward writes each gradient into memory of its own
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        self._graph = graph

    def run(self, run: Run, n: int, losses: torch.Tensor) -> None:
        if self.momentum and not self._buffers:
            self._buffers = self._momentum_buffers()
        lrs = self.tables.fill(run, n, self.lr_at)
        if self.graphs and self._graph is None:
            try:
                self._capture()
            except Exception as exc:  # noqa: BLE001 - capture is an optimisation, not a need
                say_fallback("capturing the step as a CUDA graph", exc, "running it uncaptured")
                self.graphs, self.name = False, "autograd+tables"
        self.tables.counter.zero_()
        for _ in range(n):
            if self._graph is not None:
                self._graph.replay()
            else:
                for p in self.params:
                    p.grad = None
                self._step()
        self.tables.finish(run, n, losses, lrs)
        for group in run.optimizer.param_groups:
            group["lr"] = run.lr


def captured_reason(run: Run) -> str | None:
    """Why the captured autograd step cannot run this configuration (``None`` when it can)."""
    c = run.config
    if type(run.strategy) is not Strategy:
        return f"parallel mode {run.strategy.mode!r} steps through its own collectives"
    if c.optim.name not in ("sgd", "momentum", "nesterov"):
        return f"optimizer {c.optim.name!r} (the captured step does SGD, momentum and Nesterov)"
    return None
