"""The fused dense step: softmax regression and the MLP with plain SGD in one process.

The gradient is written out by hand, with the kernels autograd itself would call, so that no
graph is built and no buffer is allocated per step:

- ``FusedDenseEngine`` (the CPU default): eager, into buffers made once, by the run's route
  (``training/routes.py``): ``exact``, the kernels autograd calls, bit-equal to autograd on the
  CPU; ``mkl`` and ``onednn``, SGD folded into the weight-gradient product (and for
  ``onednn`` the forward products in oneDNN, bias and ReLU in their epilogue).
- ``TabledDenseEngine`` (``training/dense_tables.py``, the CUDA default): the same step as a pure
  function over device tables, captured as CUDA graphs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mnistlab.parallel import Strategy
from mnistlab.training.engine import Engine, grad_of, stretch_order
from mnistlab.training.routes import choose_route

if TYPE_CHECKING:
    from mnistlab.training.state import Run


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
_linear = torch.ops.mkldnn._linear_pointwise.default
_MEAN = 1  # at::Reduction::Mean
_IGNORE = -100


class FusedDenseEngine(Engine):
    """Hand-written forward and backward of ``Linear → ReLU → … → Linear`` with mean
    cross-entropy, plain SGD, TF's L2 and the moving average, into buffers made once, by the
    run's route (module docstring)."""

    name = "fused"

    def __init__(self, run: Run, route: str | None = None):
        assert run.strategy.model is not None
        layers = dense_layers(run.strategy.model)
        assert layers is not None
        self.layers = layers
        self.weights = [layer.weight for layer in layers]
        self.biases = [layer.bias for layer in layers]
        self.params = run.parameters()
        self.route = route or choose_route(run)
        run.dense_route = self.route
        if self.route != "exact":
            self.name = f"fused+{self.route}"
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
        self.bias_params = [b.detach() for b in self.biases]
        self.bias_grads = [grad_of(b) for b in self.biases]
        self._keep_grads = False

    @torch.no_grad()
    def step_math(
        self, idx: torch.Tensor, lr: float | torch.Tensor, l2: float, loss: torch.Tensor
    ) -> None:
        """One step on the batch ``idx``, writing the data loss into the 0-dim ``loss``."""
        if self.route != "exact":
            self._folded_step(idx, lr, l2, loss)
            return
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

    def _folded_step(
        self, idx: torch.Tensor, lr: float | torch.Tensor, l2: float, loss: torch.Tensor
    ) -> None:
        """The ``mkl`` and ``onednn`` routes: the same step with SGD folded into each weight's
        gradient product, ``W ← W - lr·l2·W``, then ``W ← W - lr·gᵀ·in`` in place (``addmm_``):
        the weight gradient is never written out, and the three passes over the weights
        after the products (L2 into the gradient, SGD, the moving average) become two; the
        biases as in ``exact``."""
        assert isinstance(lr, float)
        x, y, log_probs = self.x, self.y, self.log_probs
        torch.index_select(self._images, 0, idx, out=x)
        torch.index_select(self._labels, 0, idx, out=y)
        acts: list[torch.Tensor] = []
        inp = x
        for bias, _, weight_t, out, relu in self.forward_plan:
            if self.route == "onednn":  # bias and ReLU in the product's epilogue
                out = _linear(inp, weight_t.t(), bias, "relu" if relu else "none", [], "")
            else:
                torch.addmm(bias, inp, weight_t, out=out)
                if relu:
                    out.relu_()
            acts.append(out)
            inp = out
        torch._log_softmax(acts[-1], 1, False, out=log_probs)
        _nll_forward(log_probs, y, None, _MEAN, _IGNORE, output=loss, total_weight=self.total)
        _nll_backward(
            self.one, log_probs, y, None, _MEAN, _IGNORE, self.total, grad_input=self.grad_nll
        )
        g = _log_softmax_backward(
            self.grad_nll, log_probs, 1, log_probs.dtype, out=self.grad_log_probs
        )
        inputs = [x, *acts[:-1]]
        for i in range(len(acts) - 1, -1, -1):
            _, _, _, weight_grad, bias_grad, _, below, _ = self.backward_plan[len(acts) - 1 - i]
            weight = self.l2_held[i]
            torch.sum(g, 0, out=bias_grad)
            if below is not None:  # d(in) = g·W with the weights before their update
                torch.mm(g, weight, out=below)
                _threshold_backward(below, inputs[i], 0.0, grad_input=below)
            if self._keep_grads:  # the stretch's last step leaves its gradient in .grad
                torch.mm(g.t(), inputs[i], out=weight_grad)
                weight_grad.add_(weight, alpha=l2)
            # W - lr·(gᵀ·in + l2·W): the decay as its own small term (W + (-lr·l2)·W keeps
            # float32's accuracy; a product's beta = 1 - lr·l2 would round to 6e-8 near 1
            # and bias every step's decay by up to 0.3%), then the product added in place.
            if l2:
                weight.add_(weight, alpha=-lr * l2)
            weight.addmm_(g.t(), inputs[i], alpha=-lr)
            if below is not None:
                g = below
        torch._foreach_add_(self.bias_params, self.bias_grads, alpha=-lr)

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
            self._keep_grads = i == n - 1
            self.step_math(order[i], run.lr, l2, losses[i])
            if ema is not None:
                ema.update()
