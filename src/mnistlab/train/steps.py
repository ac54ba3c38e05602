"""How a stretch of training steps runs: the engines behind the one loop.

The loop (``train/loop.py``) cuts training into stretches between boundaries (logging,
evaluation, checkpoints) and hands each stretch to an engine. Every engine computes the same
mathematics — TF's batch order, ``lr · decay^(step/decay_steps)``, cross-entropy plus
``l2 · ΣW²/2`` on weights, the optimizer step, the moving average — and leaves the same state
behind, so checkpoints, resume and callbacks never care which one ran:

- ``AutogradEngine``: autograd through the strategy's ``forward_backward``; serves every model,
  optimizer and parallel mode.
- ``FusedDenseEngine``: softmax regression and the MLP with plain SGD in one process. The
  gradient is written out by hand, calling the very kernels autograd would call (so the result
  is bit-equal on CPU), into buffers allocated once: no graph to build, no fresh 1.5 MB gradient
  on every step, no per-step host work beyond a few kernel calls.
- ``TabledDenseEngine`` (CUDA by default): the same step as one pure function that reads the
  learning rate, the EMA weight and the batch indices from device tables, captured as a CUDA
  graph of ``log_every`` steps that is replayed: one launch per stretch, nothing for the host to
  do between boundaries; ``train.compile=on`` passes it through ``torch.compile`` first.

``select_engine`` picks the fastest engine the run allows (``train.fused``, ``train.compile``,
``train.cuda_graphs`` switch each) and says why when it falls back to autograd.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from mnistlab.errors import TrainingError
from mnistlab.parallel import Strategy
from mnistlab.train.ema import ema_decay_at
from mnistlab.train.objective import add_l2_gradient, learning_rate, loss_function

if TYPE_CHECKING:
    from mnistlab.train.state import Run


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
        order = _stretch_order(run, n)
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
        self.grads = [_grad(p) for p in self.params]
        self.x = torch.empty(batch, width, device=device)
        self.y = torch.empty(batch, dtype=torch.int64, device=device)
        self.acts = [torch.empty(batch, layer.out_features, device=device) for layer in layers]
        self.grad_acts = [torch.empty_like(a) for a in self.acts]
        self.log_probs = torch.empty_like(self.acts[-1])
        self.grad_log_probs = torch.empty_like(self.acts[-1])
        self.weight_grads = [_grad(w) for w in self.weights]
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
                _grad(layer.weight),
                _grad(layer.bias),
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
        order = _stretch_order(run, n)
        l2, ema = run.config.optim.l2, run.ema
        for i in range(n):
            run.lr = self.lr_at(run, run.step + i)
            self.step_math(order[i], run.lr, l2, losses[i])
            if ema is not None:
                ema.update()


def _grad(p: torch.Tensor) -> torch.Tensor:
    assert p.grad is not None
    return p.grad


def _stretch_order(run: Run, n: int) -> torch.Tensor:
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
        self.order[:n].copy_(_stretch_order(run, n))
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


@contextlib.contextmanager
def _side_stream(enabled: bool) -> Iterator[None]:
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


def _say_fallback(what: str, exc: Exception, instead: str) -> None:
    """One line on stderr: an optimisation of the step failed, and how the run goes on."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(f"mnistlab: {what} failed ({type(exc).__name__}: {first}); {instead}", file=sys.stderr)


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
        self.outside_grads = [_grad(p) for p in (*self.weights, *self.biases)]
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
        with _side_stream(self.graphs):
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
            _say_fallback("torch.compile", exc, "running the step uncompiled")
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
            grads = [_grad(p) for p in self.params]
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
                shadows = run.ema.shadows
                diffs = torch._foreach_sub(held, shadows)
                torch._foreach_mul_(diffs, ema_weight)
                torch._foreach_add_(shadows, diffs)
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
            with _side_stream(True):
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
                _say_fallback("capturing the step as a CUDA graph", exc, "running it uncaptured")
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


def select_engine(run: Run) -> tuple[Engine, str | None]:
    """The fastest engine for ``run`` and, when it is not the fused one, why."""
    t = run.config.train
    if not t.fused:
        return AutogradEngine(run), "train.fused=false"
    reason = fused_reason(run)
    cuda = run.strategy.device.type == "cuda"
    if reason is not None:
        if cuda and _on(t.cuda_graphs, True) and captured_reason(run) is None:
            return TabledAutogradEngine(run, graphs=True), reason
        return AutogradEngine(run), reason
    # Off unless asked: measured on one H100, the compiled step replayed slower (11.6 s for
    # seed-mlp's 30,000 steps) than the captured eager step (5.5 s); see docs/speed.md.
    compile_step = _on(t.compile, False)
    graphs = cuda and _on(t.cuda_graphs, True)
    if compile_step or graphs:
        return TabledDenseEngine(run, compile_step=compile_step, graphs=graphs), None
    return FusedDenseEngine(run), None


def _on(setting: str, default: bool) -> bool:
    return default if setting == "auto" else setting == "on"


def check_finite_losses(values: Sequence[float], first_step: int) -> None:
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            raise TrainingError(
                f"training diverged: the loss became {value} at step {first_step + offset + 1}; "
                "lower optim.lr (or use train.loss=stable); checkpoints written before it are kept"
            )
