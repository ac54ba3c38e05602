"""Models: shapes, stage names, the classic initialisation, weights vs biases."""

import torch

from mnistlab.config import preset_config
from mnistlab.models import build_model, weight_names


def test_shapes_and_stages():
    for preset, stages in [
        ("seed-softmax", ["logits"]),
        ("seed-mlp", ["hidden1", "logits"]),
        ("lenet", ["conv1", "conv2", "fc", "logits"]),
    ]:
        model = build_model(preset_config(preset).model, seed=0)
        assert model.stage_names == stages
        assert model(torch.rand(4, 784)).shape == (4, 10)


def test_mlp_initialisation_matches_the_classic_program():
    model = build_model(preset_config("seed-mlp").model, seed=0)
    w = model.hidden1.linear.weight
    assert w.shape == (500, 784)
    assert abs(w.std().item() - 0.1) < 0.002 and abs(w.mean().item()) < 0.002
    assert torch.all(model.hidden1.linear.bias == 0.1) and torch.all(model.logits.bias == 0.1)
    assert weight_names(model) == ["hidden1.linear.weight", "logits.weight"]


def test_truncated_normal_stays_within_two_std():
    model = build_model(preset_config("seed-mlp-book").model, seed=0)
    w = model.hidden1.linear.weight
    assert w.abs().max().item() <= 0.2
    assert 0.08 < w.std().item() < 0.09  # a normal truncated at 2 std has std 0.88 * 0.1


def test_same_seed_same_weights():
    a = build_model(preset_config("seed-mlp").model, seed=3)
    b = build_model(preset_config("seed-mlp").model, seed=3)
    c = build_model(preset_config("seed-mlp").model, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.logits.weight, c.logits.weight)


def test_softmax_biases_start_at_zero():
    model = build_model(preset_config("seed-softmax").model, seed=0)
    assert torch.all(model.logits.bias == 0)
