"""The fused dense step: softmax regression and the MLP with plain SGD in one process.

The gradient is written out by hand, with the kernels autograd itself would call, so that no
graph is built and no buffer is allocated per step:

- ``FusedDenseEngine`` (the CPU default): eager, into buffers made once; bit-equal to autograd
  on the CPU.
- ``TabledDenseEngine`` (the CUDA default): ``dense_step``, a pure function that reads each
  step's batch, learning rate and EMA weight from device tables, over flat buffers of the
  parameters, gradients and shadows; captured as a CUDA graph of ``log_every`` steps and
  replayed, and passed through ``torch.compile`` first when ``train.compile=on``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from mnistlab.parallel import Strategy
from mnistlab.train.engine import (
    Engine,
    StepTables,
    grad_of,
    say_fallback,
    side_stream,
    stretch_order,
)

if TYPE_CHECKING:
    from mnistlab.train.state import Run


def dense_layers(model: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of a model made only of Linear layers with ReLU between them (softmax
    regression, the MLP), in order; ``None`` for anything else."""
    layers: list[nn.Linear] = []
    relu_after: list[bool] = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            layers.append(module)
            relu_after.append(False)
        elif isinstance(module, nn.ReLU):
            if not relu_after or relu_after[-1]:
                return None
            relu_after[-1] = True
        elif not isinstance(module, nn.Sequential):
            return None
    if not layers or relu_after[-1] or not all(relu_after[:-1]):
        return None
    return layers


def fused_reason(run: Run) -> str | None:
    """Why the fused dense step cannot run this configuration (``None`` when it can)."""
    c = run.config
    if type(run.strategy) is not Strategy:
        return f"parallel mode {run.strategy.mode!r} steps through autograd"
    if c.optim.name != "sgd":
        return f"optimizer {c.optim.name!r} (the fused step does plain SGD)"
    if c.train.loss != "stable":
        return "train.loss=naive (kept on autograd, to fail exactly as the original did)"
    assert run.strategy.model is not None
    if dense_layers(run.strategy.model) is None:
        return f"model {c.model.name!r} is not dense (softmax and mlp are)"
    return None


_nll_forward = torch.ops.aten.nll_loss_forward.output
_nll_backward = torch.ops.aten.nll_loss_backward.grad_input
_log_softmax_backward = torch.ops.aten._log_softmax_backward_data
_threshold_backward = torch.ops.aten.threshold_backward.grad_input
_MEAN = 1  # at::Reduction::Mean
_IGNORE = -100


class FusedDenseEngine(Engine):
    """Hand-written forward and backward of ``Linear → ReLU → … → Linear`` with mean
    cross-entropy, plain SGD, TF's L2 and the moving average, into buffers made once."""

    name = "fused"

    def __init__(self, run: Run):
        assert run.strategy.model is not None
        layers = dense_layers(run.strategy.model)
        assert layers is not None
        self.layers = layers
        self.weights = [layer.weight for layer in layers]
        self.biases = [layer.bias for layer in layers]
        self.params = run.parameters()
        batch, device = run.config.train.batch_size, run.strategy.device
        width = run.data.train.images.shape[1]
        with torch.no_grad():
            for p in self.params:  # gradients live in .grad, reused by every step
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        self.grads = [grad_of(p) for p in self.params]
        self.x = torch.empty(batch, width, device=device)
        self.y = torch.empty(batch, dtype=torch.int64, device=device)
        self.acts = [torch.empty(batch, layer.out_features, device=device) for layer in layers]
        self.grad_acts = [torch.empty_like(a) for a in self.acts]
        self.log_probs = torch.empty_like(self.acts[-1])
        self.grad_log_probs = torch.empty_like(self.acts[-1])
        self.weight_grads = [grad_of(w) for w in self.weights]
        self.l2_held = [w.detach() for w in self.weights]
        self.one = torch.ones((), device=device)
        self.total = torch.empty((), device=device)
        self.grad_nll = torch.empty_like(self.log_probs)
        # The step as a fixed plan over views made once (a transposed view of a parameter or a
        # buffer stays valid: every update is in place), so a step is kernel calls and little
        # else. Forward: (bias, input, Wᵀ, output, relu?); backward, top layer first:
        # (g, gᵀ, layer input, dW, db, W, gradient below or None, activation below).
        inputs = [self.x, *self.acts[:-1]]
        last = len(layers) - 1
        self.forward_plan = [
            (layer.bias, inputs[i], layer.weight.t(), self.acts[i], i < last)
            for i, layer in enumerate(layers)
        ]
        grads_out = [*self.grad_acts[:-1], self.grad_log_probs]
        self.backward_plan = [
            (
                grads_out[i],
                grads_out[i].t(),
                inputs[i],
                grad_of(layer.weight),
                grad_of(layer.bias),
                layer.weight,
                self.grad_acts[i - 1] if i > 0 else None,
                self.acts[i - 1] if i > 0 else None,
            )
            for i, layer in reversed(list(enumerate(layers)))
        ]

    @torch.no_grad()
    def step_math(
        self, idx: torch.Tensor, lr: float | torch.Tensor, l2: float, loss: torch.Tensor
    ) -> None:
        """One step on the batch ``idx``, writing the data loss into the 0-dim ``loss``."""
        x, y, log_probs = self.x, self.y, self.log_probs
        torch.index_select(self._images, 0, idx, out=x)
        torch.index_select(self._labels, 0, idx, out=y)
        # Forward, as F.linear does it: addmm(b, x, Wᵀ), then ReLU in place.
        for bias, inp, weight_t, out, relu in self.forward_plan:
            torch.addmm(bias, inp, weight_t, out=out)
            if relu:
                out.relu_()
        torch._log_softmax(self.acts[-1], 1, False, out=log_probs)
        _nll_forward(log_probs, y, None, _MEAN, _IGNORE, output=loss, total_weight=self.total)
        # Backward: the kernels autograd calls for nll_loss and log_softmax ...
        _nll_backward(
            self.one, log_probs, y, None, _MEAN, _IGNORE, self.total, grad_input=self.grad_nll
        )
        _log_softmax_backward(self.grad_nll, log_probs, 1, log_probs.dtype, out=self.grad_log_probs)
        # ... and for each linear layer: dW = gᵀ·in, db = Σ g, d(in) = g·W, masked by ReLU
        # (zero where the activation is <= 0, as autograd's threshold_backward).
        for g, g_t, inp, weight_grad, bias_grad, weight, below, act in self.backward_plan:
            torch.mm(g_t, inp, out=weight_grad)
            torch.sum(g, 0, out=bias_grad)
            if below is not None:
                torch.mm(g, weight, out=below)
                _threshold_backward(below, act, 0.0, grad_input=below)
        if l2:
            torch._foreach_add_(self.weight_grads, self.l2_held, alpha=l2)
        self._sgd(lr)

    def _sgd(self, lr: float | torch.Tensor) -> None:
        # As torch.optim.SGD's foreach path: p += -lr · g.
        assert isinstance(lr, float)
        torch._foreach_add_(self.params, self.grads, alpha=-lr)

    def run(self, run: Run, n: int, losses: torch.Tensor) -> None:
        self._images, self._labels = run.data.train.images, run.data.train.labels
        order = stretch_order(run, n)
        l2, ema = run.config.optim.l2, run.ema
        for i in range(n):
            run.lr = self.lr_at(run, run.step + i)
            self.step_math(order[i], run.lr, l2, losses[i])
            if ema is not None:
                ema.update()


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
        super().__init__(run)
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
