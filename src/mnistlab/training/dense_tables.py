"""The fused dense step as one pure function over device tables (the CUDA default).

``dense_step`` reads each step's batch, learning rate and EMA weight from device tables, over
flat buffers of the parameters, gradients and shadows, so no host value changes between steps;
``TabledDenseEngine`` captures it as a CUDA graph of ``log_every`` steps and replays it, and
passes it through ``torch.compile`` first when ``train.compile=on``. Its mathematics is the
fused step's (``training/dense.py``) with L2 in the weight-gradient product.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from mnistlab.training.dense import _IGNORE, _MEAN, FusedDenseEngine
from mnistlab.training.engine import StepTables, grad_of, say_fallback, side_stream

if TYPE_CHECKING:
    from mnistlab.training.state import Run


def dense_step(
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
    grads: list[torch.Tensor],
    flat_params: torch.Tensor,
    flat_grads: torch.Tensor,
    flat_shadows: torch.Tensor | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    order: torch.Tensor,
    rates: torch.Tensor,
    losses: torch.Tensor,
    counter: torch.Tensor,
    one: torch.Tensor,
    l2: float,
) -> None:
    """One fused dense step with every per-step value read from device tables at ``counter``:
    no host value changes between steps, so it can be compiled and captured as a graph.

    The parameters, their gradients and their moving averages each live in one flat buffer
    (weights, then biases): ``weights`` and ``biases`` are views of ``flat_params``, ``grads``
    (weights', then biases') views of ``flat_grads``, so the update and the moving average are
    one elementwise kernel each over every parameter at once."""
    # About 22 kernels a step (a replayed graph costs a few microseconds a kernel, so their
    # number is the step's price on a GPU): gradients go straight into their views, L2 rides
    # in the weight gradient's product (beta), SGD and the moving average are a kernel each.
    idx = order.index_select(0, counter).view(-1)
    x = images.index_select(0, idx)
    y = labels.index_select(0, idx)
    inputs = [x]
    last = len(weights) - 1
    for i in range(last + 1):
        out = torch.addmm(biases[i], inputs[-1], weights[i].t())
        inputs.append(out.relu() if i < last else out)
    log_probs = torch.log_softmax(inputs[-1], 1)
    loss, total = torch.ops.aten.nll_loss_forward(log_probs, y, None, _MEAN, _IGNORE)
    g = torch.ops.aten.nll_loss_backward(one, log_probs, y, None, _MEAN, _IGNORE, total)
    g = torch.ops.aten._log_softmax_backward_data(g, log_probs, 1, log_probs.dtype)
    n = last + 1
    for i in range(last, -1, -1):
        # dW = gᵀ·in + l2·W in one product; db = Σ g; d(in) = g·W through ReLU's backward.
        torch.addmm(weights[i], g.t(), inputs[i], beta=l2, out=grads[i])
        torch.sum(g, 0, out=grads[n + i])
        if i > 0:
            g = torch.ops.aten.threshold_backward(g.mm(weights[i]), inputs[i], 0.0)
    # p -= lr · g over every parameter at once; then shadow += w · (p - shadow) (a lerp).
    # ``rates`` holds each step's (learning rate, EMA weight): one lookup for both.
    lr, w = rates.index_select(0, counter).view(2).unbind()
    flat_params.addcmul_(flat_grads, lr, value=-1.0)
    if flat_shadows is not None:
        flat_shadows.lerp_(flat_params, w)
    losses.index_copy_(0, counter, loss.view(1))
    counter.add_(1)


def _flat_views(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of ``flat`` shaped as ``like``, one after another."""
    views, offset = [], 0
    for t in like:
        views.append(flat[offset : offset + t.numel()].view(t.shape))
        offset += t.numel()
    return views


class TabledDenseEngine(FusedDenseEngine):
    """``dense_step`` over stretches of up to ``log_every`` steps whose batch indices, learning
    rates and EMA weights are copied to the device once per stretch; optionally compiled by
    ``torch.compile`` and, on CUDA, captured as one graph per stretch and replayed.

    The step works on the engine's own flat buffers: the parameters, gradients and shadows are
    copied in at the start of each stretch and back out at its end (a few copies of 1.6 MB per
    ``log_every`` steps), so the model, the moving average and checkpoints see ordinary tensors
    at every boundary and nothing outside the engine aliases its buffers."""

    def __init__(self, run: Run, *, compile_step: bool, graphs: bool):
        super().__init__(run, route="exact")
        run.dense_route = None  # its own mathematics, not one of the eager routes
        device = run.strategy.device
        self.chunk = max(1, run.config.train.log_every)
        self.graphs = graphs
        self.tables = StepTables(run, self.chunk)
        # The model's tensors in dense_step's order (weights, then biases), and the engine's flat
        # copies of them.
        self.outside = [w.detach() for w in self.weights] + [b.detach() for b in self.biases]
        self.outside_grads = [grad_of(p) for p in (*self.weights, *self.biases)]
        self.outside_shadows: list[torch.Tensor] = []
        if run.ema is not None:
            position = {id(p): i for i, p in enumerate(self.params)}
            self.outside_shadows = [
                run.ema.shadows[position[id(p)]] for p in (*self.weights, *self.biases)
            ]
        total = sum(p.numel() for p in self.outside)
        self.flat_params = torch.zeros(total, device=device)
        self.flat_grads = torch.zeros(total, device=device)
        self.flat_shadows = torch.zeros(total, device=device) if self.outside_shadows else None
        self.param_views = _flat_views(self.flat_params, self.outside)
        self.grad_views = _flat_views(self.flat_grads, self.outside)
        self.shadow_views = (
            _flat_views(self.flat_shadows, self.outside) if self.flat_shadows is not None else []
        )
        n = len(self.weights)
        self.step_weights, self.step_biases = self.param_views[:n], self.param_views[n:]
        self.l2 = float(run.config.optim.l2)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._one_graph: torch.cuda.CUDAGraph | None = None
        self._step_fn: Callable[..., None] = dense_step
        self.compiled = compile_step
        if compile_step:
            self._step_fn = torch.compile(dense_step, fullgraph=True, dynamic=False)
        self._set_name()

    def _set_name(self) -> None:
        self.name = "fused+tables" + ("+compiled" if self.compiled else "")
        self.name += "+cuda-graphs" if self.graphs else ""

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(the model's tensors, the engine's views of them): parameters, gradients, shadows."""
        return (
            [*self.outside, *self.outside_grads, *self.outside_shadows],
            [*self.param_views, *self.grad_views, *self.shadow_views],
        )

    @torch.no_grad()
    def _copy_in(self) -> None:
        outside, inside = self._pairs()
        torch._foreach_copy_(inside, outside)

    @torch.no_grad()
    def _copy_out(self) -> None:
        outside, inside = self._pairs()
        torch._foreach_copy_(outside, inside)

    @torch.no_grad()
    def _step(self) -> None:
        self._step_fn(
            self.step_weights,
            self.step_biases,
            self.grad_views,
            self.flat_params,
            self.flat_grads,
            self.flat_shadows,
            self._images,
            self._labels,
            self.tables.order,
            self.tables.rates,
            self.tables.losses,
            self.tables.counter,
            self.one,
            self.l2,
        )

    def _capture(self, steps: int) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(steps):
                self._step()
        return graph

    def _warm_up(self) -> None:
        """Compile and warm up (on a side stream, as capture requires), then restore the state,
        so the real weights see no extra step."""
        state = [self.flat_params, self.flat_grads]
        if self.flat_shadows is not None:
            state.append(self.flat_shadows)
        saved = [t.detach().clone() for t in state]
        with side_stream(self.graphs):
            for _ in range(3):
                self.tables.counter.zero_()
                self._step()
        with torch.no_grad():
            for t, s in zip(state, saved, strict=True):
                t.copy_(s)

    def _prepare(self) -> None:
        try:
            self._warm_up()
        except Exception as exc:  # noqa: BLE001 - compilation is an optimisation, not a need
            if not self.compiled:
                raise
            say_fallback("torch.compile", exc, "running the step uncompiled")
            self._step_fn, self.compiled = dense_step, False
            self._set_name()
            self._warm_up()
        if self.graphs:
            self._graph = self._capture(self.chunk)
            self._one_graph = self._capture(1)

    def run(self, run: Run, n: int, losses: torch.Tensor) -> None:
        self._images, self._labels = run.data.train.images, run.data.train.labels
        lrs = self.tables.fill(run, n, self.lr_at)
        self._copy_in()
        if self._graph is None and (self.graphs or self.compiled):
            self._prepare()
        self.tables.counter.zero_()
        if self.graphs and n == self.chunk:
            assert self._graph is not None
            self._graph.replay()
        else:
            for _ in range(n):
                if self._one_graph is not None:
                    self._one_graph.replay()
                else:
                    self._step()
        self._copy_out()
        self.tables.finish(run, n, losses, lrs)
