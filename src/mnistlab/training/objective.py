"""The pieces of the classic objective: cross-entropy, TensorFlow's L2, the decayed learning rate.

Small pure functions, each pinned by a hand-computed unit test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mnistlab.config import OptimConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean sparse softmax cross-entropy, from log-softmax: stable for any logits."""
    return F.cross_entropy(logits, labels)


def naive_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The original notes' loss: ``-sum(y * log(softmax(logits)))`` summed over the batch.

    ``log`` of a softmax that underflowed to 0 is ``-inf``, and its gradient NaN: with lr 0.5 this
    diverges, in TensorFlow as here. Offered only to show that; training stops loudly on NaN.
    """
    probs = torch.softmax(logits, dim=1)
    picked = probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    return -torch.log(picked).sum()


def loss_function(name: str) -> LossFn:
    return naive_cross_entropy if name == "naive" else cross_entropy


def l2_penalty(weights: Sequence[torch.Tensor], scale: float) -> torch.Tensor:
    """TensorFlow's ``scale * sum(tf.nn.l2_loss(w))`` with ``l2_loss(w) = sum(w**2) / 2``."""
    if not weights:
        return torch.zeros(())
    total = torch.stack([w.detach().float().pow(2).sum() for w in weights]).sum()
    return scale * total / 2


def add_l2_gradient(weights: Sequence[torch.Tensor], scale: float) -> None:
    """Add the gradient of ``l2_penalty`` (``scale * w``) to each weight's ``.grad`` in place.

    Adding it directly is the same mathematics as back-propagating the penalty, costs no graph,
    and works the same for every parallel mode (a rank adds it to the slice of ``w`` it holds).
    """
    if scale == 0 or not weights:
        return
    grads = [w.grad for w in weights if w.grad is not None]
    held = [w.detach() for w in weights if w.grad is not None]
    if grads:
        torch._foreach_add_(grads, held, alpha=scale)


def learning_rate(step: int, optim: OptimConfig, decay_steps: int, total_steps: int) -> float:
    """The rate of step ``step`` (counted from 0) under ``optim.schedule`` and ``optim.warmup_steps``.

    ``exponential`` is the classic programs' decay; ``linear`` falls from ``lr`` after the warm-up
    to ``lr / (total - warmup)`` at the last step, reaching 0 just after it. A warm-up scales
    either by ``(step + 1) / warmup_steps`` while it lasts.
    """
    warmup = optim.warmup_steps
    if optim.schedule == "linear":
        rate = optim.lr * max(0, total_steps - max(step, warmup)) / max(1, total_steps - warmup)
    else:
        rate = exponential_decay(step, optim.lr, optim.lr_decay, decay_steps, optim.staircase)
    if step < warmup:
        rate *= (step + 1) / warmup
    return rate


def exponential_decay(
    step: int, base: float, decay: float, decay_steps: int, staircase: bool = False
) -> float:
    """``base * decay ** (step / decay_steps)``; with ``staircase`` the exponent is an integer."""
    exponent = step / decay_steps
    if staircase:
        exponent = math.floor(exponent)
    return base * decay**exponent
