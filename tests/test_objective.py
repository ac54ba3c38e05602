"""The classic formulas, pinned against numbers computed by hand."""

import math

import pytest
import torch

from mnistlab.config import OptimConfig
from mnistlab.training import (
    EMA,
    add_l2_gradient,
    cross_entropy,
    ema_decay_at,
    exponential_decay,
    l2_penalty,
    learning_rate,
    naive_cross_entropy,
)


def test_learning_rate_at_step_825_continuous():
    # 0.1 * 0.99 ** (825 / 550) = 0.1 * 0.99 ** 1.5 = 0.0985037...
    assert exponential_decay(825, 0.1, 0.99, 550) == pytest.approx(0.098503756, rel=1e-8)


def test_learning_rate_at_step_825_staircase():
    # staircase: the exponent is floor(825 / 550) = 1, so 0.1 * 0.99
    assert exponential_decay(825, 0.1, 0.99, 550, staircase=True) == pytest.approx(0.099, rel=1e-12)
    assert exponential_decay(549, 0.8, 0.99, 550, staircase=True) == 0.8
    assert exponential_decay(1100, 0.8, 0.99, 550, staircase=True) == pytest.approx(0.8 * 0.99**2)


def test_learning_rate_constant_when_decay_is_one():
    assert exponential_decay(12345, 0.5, 1.0, 550) == 0.5


def test_linear_schedule_with_warmup():
    o = OptimConfig(lr=0.1, schedule="linear", warmup_steps=10)
    # warm-up: (step + 1) / 10 of the peak, the peak at step 9 and 10, then straight down to 0
    assert learning_rate(0, o, 550, 110) == pytest.approx(0.01)
    assert learning_rate(4, o, 550, 110) == pytest.approx(0.05)
    assert learning_rate(9, o, 550, 110) == pytest.approx(0.1)
    assert learning_rate(10, o, 550, 110) == pytest.approx(0.1)
    assert learning_rate(60, o, 550, 110) == pytest.approx(0.05)
    assert learning_rate(109, o, 550, 110) == pytest.approx(0.001)
    assert learning_rate(110, o, 550, 110) == 0.0


def test_exponential_schedule_is_the_classic_one_and_can_warm_up():
    o = OptimConfig(lr=0.1, lr_decay=0.99)
    assert learning_rate(825, o, 550, 30_000) == exponential_decay(825, 0.1, 0.99, 550)
    warm = OptimConfig(lr=0.1, lr_decay=0.99, warmup_steps=100)
    assert learning_rate(49, warm, 550, 30_000) == pytest.approx(0.5 * 0.1 * 0.99 ** (49 / 550))
    assert learning_rate(825, warm, 550, 30_000) == exponential_decay(825, 0.1, 0.99, 550)


def test_ema_decay_rule():
    assert ema_decay_at(0, 0.99) == pytest.approx(0.1)
    assert ema_decay_at(1, 0.99) == pytest.approx(2 / 11)
    assert ema_decay_at(2, 0.99) == pytest.approx(0.25)
    assert ema_decay_at(10_000, 0.99) == 0.99  # capped by the configured decay


def test_ema_after_three_updates():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    ema = EMA([p], 0.99)
    shadows = []
    for value in (2.0, 3.0, 4.0):
        with torch.no_grad():
            p.fill_(value)
        ema.update()
        shadows.append(ema.shadows[0].item())
    # d = 0.1: 0.1*1 + 0.9*2 = 1.9; d = 2/11: (2*1.9 + 9*3)/11 = 2.8; d = 0.25: 0.25*2.8 + 0.75*4 = 3.7
    assert shadows == pytest.approx([1.9, 2.8, 3.7], rel=1e-6)
    assert ema.num_updates == 3


def test_l2_penalty_is_half_sum_of_squares():
    w1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # sum of squares 30
    w2 = torch.tensor([[2.0]])  # 4
    assert l2_penalty([w1, w2], 1e-4).item() == pytest.approx(1e-4 * (30 + 4) / 2)


def test_l2_gradient_equals_back_propagated_penalty():
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    w.grad = torch.zeros_like(w)
    add_l2_gradient([w], 1e-4)
    assert torch.allclose(w.grad, 1e-4 * w.detach())
    # the same as autograd through 1e-4 * sum(w**2) / 2
    v = torch.nn.Parameter(w.detach().clone())
    (1e-4 * v.pow(2).sum() / 2).backward()
    assert torch.allclose(w.grad, v.grad)


def test_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + math.exp(1) + 1))
    assert cross_entropy(logits, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-6)
    # the naive form sums over the batch
    two = torch.cat([logits, logits])
    assert naive_cross_entropy(two, torch.tensor([0, 0])).item() == pytest.approx(
        2 * expected, rel=1e-5
    )


def test_stable_loss_survives_logits_where_the_naive_one_does_not():
    logits = torch.tensor([[1000.0, 0.0]])
    assert math.isfinite(cross_entropy(logits, torch.tensor([1])).item())
    assert math.isinf(naive_cross_entropy(logits, torch.tensor([1])).item())
