"""The ``trimmed`` route of the fused dense step: the first layer's products over the pixels a
batch inks, nothing else.

A pixel that is 0 in every image of a batch adds nothing to ``x·W₁ᵀ`` and leaves its column of
the data gradient ``gᵀ·x`` at 0, so those products can skip it exactly. A gather of the pixels
each batch inks would cost more than it saves (index kernels over a 1.6 MB matrix), so the engine
orders the input pixels once, by how many training images ink each (most first), and stores the
first layer's weights in that order, transposed (``[pixels, units]``): a batch then inks only a
*prefix* of the order — up to the furthest-ranked pixel any of its images inks — and both large
products run over a slice of rows, a view, with no copy of the weights. On full MNIST a batch of
100 reaches on average 633 of the 784 pixels (``benchmarks/seed_mlp.py`` prints it); on
Fashion-MNIST nearly every batch reaches all 784 and the route runs as a plain folded step.

The rest is the ``onednn`` route's step (``training/dense.py``) over the engine's own flat
buffers: the forward products through oneDNN with bias and ReLU in their epilogue (MKL's
``addmm`` where torch has no oneDNN), the decay ``W ← W - lr·l2·W`` as one pass over all the
weights, each weight gradient's product added into its weights in place (``addmm_``), the biases
and the moving average one kernel each over every parameter. The model, its moving average and
``.grad`` get the engine's values back, in their own layout, at every boundary, as the tabled
engine's do (``training/dense_tables.py``), so checkpoints, evaluation and callbacks see ordinary
tensors. Products that skip zeros and sum in another order agree with ``exact`` to float32's
rounding, not bit for bit; a resume by this route is bit-equal to an uninterrupted run
(``tests/test_routes.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mnistlab.training.dense import (
    _IGNORE,
    _MEAN,
    FusedDenseEngine,
    _linear,
    _log_softmax_backward,
    _nll_backward,
    _nll_forward,
    _threshold_backward,
)
from mnistlab.training.ema import ema_decay_at
from mnistlab.training.engine import grad_of, stretch_order
from mnistlab.training.routes import onednn_ready

if TYPE_CHECKING:
    from mnistlab.training.state import Run

ALIGN = 16
"""Prefix lengths are rounded up to a multiple of this (the extra pixels are ones no image of the
batch inks, so they add zeros): fewer distinct product shapes, each one a oneDNN primitive made
once and cached."""


def pixel_order(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, reach)`` for a training set's flattened images: ``order`` the pixels by how many
    images ink them (non-zero), most first (ties by position, so the order is fixed by the data);
    ``reach[i]`` how long a prefix of ``order`` holds every pixel image ``i`` inks. One pass over
    the images for each (0.14 s for MNIST's 55,000 on two cores)."""
    width, device = images.shape[1], images.device
    counts = torch.zeros(width, dtype=torch.int64, device=device)
    for start in range(0, len(images), chunk):
        counts += torch.count_nonzero(images[start : start + chunk], dim=0)
    order = torch.argsort(counts, descending=True, stable=True)
    # Each pixel's place in the order, counted from 1, in the images' dtype (exact: <= 2^24).
    place = torch.empty(width, dtype=images.dtype, device=device)
    place[order] = torch.arange(1, width + 1, dtype=images.dtype, device=device)
    reach = torch.empty(len(images), dtype=torch.int64, device=device)
    for start in range(0, len(images), chunk):
        inked = images[start : start + chunk].ne(0)
        reach[start : start + chunk] = (inked * place).amax(1).long()
    return order, reach


def prefix_lengths(reach: torch.Tensor, order: torch.Tensor, width: int) -> list[int]:
    """For each batch (a row of ``order``), the prefix its images need, rounded up to ``ALIGN``
    (at most ``width``; at least ``ALIGN``, so an all-black batch still has a product to run)."""
    need = reach[order].amax(1).clamp_min(1)
    return ((need + ALIGN - 1) // ALIGN * ALIGN).clamp_max(width).tolist()


class TrimmedDenseEngine(FusedDenseEngine):
    """The fused dense step by the ``trimmed`` route (module docstring)."""

    def __init__(self, run: Run):
        super().__init__(run, route="trimmed")
        device = run.strategy.device
        self.onednn = onednn_ready(device, run.data.train.images.dtype)
        self.width = self.weights[0].shape[1]
        first = self.weights[0]
        # The engine's parameters: the first weight as [pixels (in the engine's order), units],
        # the other weights as the model has them, then the biases; one flat buffer, and the
        # same for the gradients and the shadows.
        shapes = [first.t().shape, *(w.shape for w in self.weights[1:])]
        shapes += [b.shape for b in self.biases]
        sizes = [torch.Size(s).numel() for s in shapes]
        n_weights = sum(sizes[: len(self.weights)])
        self.flat = torch.zeros(sum(sizes), device=device)
        self.flat_grads = torch.zeros_like(self.flat)
        self.all_weights, self.all_biases = self.flat[:n_weights], self.flat[n_weights:]
        self.bias_grads_flat = self.flat_grads[n_weights:]
        self.views = _views(self.flat, shapes, sizes)
        self.grad_views = _views(self.flat_grads, shapes, sizes)
        self.ema = run.ema
        self.flat_shadows: torch.Tensor | None = None
        self.shadow_views: list[torch.Tensor] = []
        self.outside_shadows: list[torch.Tensor] = []
        if run.ema is not None:
            position = {id(p): i for i, p in enumerate(self.params)}
            self.outside_shadows = [
                run.ema.shadows[position[id(p)]] for p in (*self.weights, *self.biases)
            ]
            self.flat_shadows = torch.zeros_like(self.flat)
            self.shadow_views = _views(self.flat_shadows, shapes, sizes)
        self.outside = [p.detach() for p in (*self.weights, *self.biases)]
        self.outside_grads = [grad_of(p) for p in (*self.weights, *self.biases)]
        self.order: torch.Tensor | None = None  # the pixel order, made at the first stretch
        self.back: torch.Tensor | None = None  # and its inverse
        self.reach: torch.Tensor | None = None
        self.l2 = float(run.config.optim.l2)

    # -- the engine's buffers and the model's tensors ----------------------------------------------
    def _copy_in(self) -> None:
        assert self.order is not None
        sources = [self.outside]
        targets = [self.views]
        if self.flat_shadows is not None:
            sources.append(self.outside_shadows)
            targets.append(self.shadow_views)
        for source, target in zip(sources, targets, strict=True):
            torch.index_select(source[0].t().contiguous(), 0, self.order, out=target[0])
            torch._foreach_copy_(target[1:], source[1:])

    def _copy_out(self) -> None:
        back = self.back
        assert back is not None
        pairs = [(self.outside, self.views), (self.outside_grads, self.grad_views)]
        if self.flat_shadows is not None:
            pairs.append((self.outside_shadows, self.shadow_views))
        for outside, inside in pairs:
            outside[0].copy_(inside[0].index_select(0, back).t())
            torch._foreach_copy_(outside[1:], inside[1:])

    # -- the steps ---------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, run: Run, n: int, losses: torch.Tensor) -> None:
        images, labels = run.data.train.images, run.data.train.labels
        if self.order is None:
            self.order, self.reach = pixel_order(images)
            self.back = torch.argsort(self.order)
        assert self.reach is not None
        batches = stretch_order(run, n)
        lengths = prefix_lengths(self.reach, batches, self.width)
        self._copy_in()
        ema = self.ema
        for i in range(n):
            run.lr = self.lr_at(run, run.step + i)
            weight = 0.0
            if ema is not None:
                weight = 1.0 - ema_decay_at(ema.num_updates, ema.decay)
                ema.num_updates += 1
            self._trimmed_step(
                images, labels, batches[i], lengths[i], run.lr, weight, losses[i], i == n - 1
            )
        self._copy_out()

    def _trimmed_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        idx: torch.Tensor,
        length: int,
        lr: float,
        ema_weight: float,
        loss: torch.Tensor,
        keep_grads: bool,
    ) -> None:
        assert self.order is not None
        x, y, log_probs = self.x, self.y, self.log_probs
        torch.index_select(images, 0, idx, out=x)
        torch.index_select(labels, 0, idx, out=y)
        # The batch's pixels in the engine's order, as far as its images ink them.
        inked = x.index_select(1, self.order[:length])
        n_layers = len(self.weights)
        weights, biases = self.views[:n_layers], self.views[n_layers:]
        first = weights[0][:length]  # [pixels, units]: a view of the rows this batch needs
        inputs = [inked]
        for i in range(n_layers):
            relu = i < n_layers - 1
            weight_t = first if i == 0 else weights[i].t()  # [in, out]
            if self.onednn:  # bias and ReLU in the product's epilogue
                out = _linear(
                    inputs[i], weight_t.t(), biases[i], "relu" if relu else "none", [], ""
                )
            else:
                out = torch.addmm(biases[i], inputs[i], weight_t)
                if relu:
                    out.relu_()
            inputs.append(out)
        logits = inputs.pop()
        torch._log_softmax(logits, 1, False, out=log_probs)
        _nll_forward(log_probs, y, None, _MEAN, _IGNORE, output=loss, total_weight=self.total)
        _nll_backward(
            self.one, log_probs, y, None, _MEAN, _IGNORE, self.total, grad_input=self.grad_nll
        )
        g = _log_softmax_backward(
            self.grad_nll, log_probs, 1, log_probs.dtype, out=self.grad_log_probs
        )
        # Backward with the weights before their update: db = Σ g, d(in) = g·W through ReLU.
        outputs_grads = [g]
        bias_grads = self.grad_views[n_layers:]
        for i in range(n_layers - 1, -1, -1):
            torch.sum(g, 0, out=bias_grads[i])
            if i > 0:
                g = torch.mm(g, weights[i])
                _threshold_backward(g, inputs[i], 0.0, grad_input=g)
                outputs_grads.append(g)
        outputs_grads.reverse()  # the gradient at each layer's output, first layer first
        l2 = self.l2
        if keep_grads:  # the stretch's last step leaves its gradient for the boundary's callbacks
            grads = self.grad_views[:n_layers]
            torch.mul(weights[0], l2, out=grads[0])
            grads[0][:length].addmm_(inked.t(), outputs_grads[0])
            for i in range(1, n_layers):
                torch.addmm(weights[i], outputs_grads[i].t(), inputs[i], beta=l2, out=grads[i])
        # W - lr·(gᵀ·in + l2·W): the decay as its own term over all the weights at once (a
        # product's beta = 1 - lr·l2 would round to float32's spacing near 1), then each product
        # added in place; the first layer's only on the rows the batch reached (the others'
        # data gradient is exactly 0).
        if l2:
            self.all_weights.add_(self.all_weights, alpha=-lr * l2)
        first.addmm_(inked.t(), outputs_grads[0], alpha=-lr)
        for i in range(1, n_layers):
            weights[i].addmm_(outputs_grads[i].t(), inputs[i], alpha=-lr)
        self.all_biases.add_(self.bias_grads_flat, alpha=-lr)
        if self.flat_shadows is not None:
            self.flat_shadows.lerp_(self.flat, ema_weight)


def _views(flat: torch.Tensor, shapes: list[torch.Size], sizes: list[int]) -> list[torch.Tensor]:
    views, offset = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        views.append(flat[offset : offset + size].view(shape))
        offset += size
    return views
