"""Models: shapes, stage names, the classic initialisation, weights vs biases."""

import pytest
import torch

from mnistlab.config import ModelConfig, parameter_count, preset_config
from mnistlab.config.model_rules import MODEL_RULES
from mnistlab.errors import ConfigError
from mnistlab.models import MODELS, build_model, model_spec


def test_shapes_and_stages():
    for preset, stages in [
        ("seed-softmax", ["logits"]),
        ("seed-mlp", ["hidden1", "logits"]),
        ("lenet", ["conv1", "conv2", "fc", "logits"]),
        ("speedrun", ["conv1", "conv2", "logits"]),
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


def test_every_model_is_registered_with_its_validation_rules():
    assert set(MODELS) == set(MODEL_RULES) == {"softmax", "mlp", "lenet", "cnn"}
    with pytest.raises(ConfigError, match="did you mean 'lenet'"):
        model_spec("lenett")


def test_models_follow_the_input_shape():
    """A model is built for its dataset's image shape; nothing assumes 28x28."""
    for preset in ("seed-softmax", "seed-mlp", "lenet", "speedrun"):
        model = build_model(preset_config(preset).model, num_classes=5, input_shape=(3, 32, 32))
        assert model(torch.rand(2, 3 * 32 * 32)).shape == (2, 5)
        config = preset_config(preset).model
        assert parameter_count(config, 5, (3, 32, 32)) == sum(p.numel() for p in model.parameters())


def test_cnn_blocks_and_batch_norm_start():
    """The speedrun's CNN: conv 5x5 without bias → batch norm → ReLU → pool, per width; batch norm
    starts at scale 1 and shift 0 whatever the preset's bias_init says."""
    model = build_model(preset_config("speedrun").model, seed=0)
    assert model.conv1.conv.weight.shape == (16, 1, 5, 5) and model.conv1.conv.bias is None
    assert model.conv2.conv.weight.shape == (32, 16, 5, 5)
    assert model.logits.linear.weight.shape == (10, 32 * 4 * 4)
    for norm in (model.conv1.norm, model.conv2.norm):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    assert model.conv1.conv.weight.abs().max().item() <= 0.2  # fan-in bound: 1/sqrt(1*5*5)
    assert model.conv2.conv.weight.abs().max().item() <= 0.05  # 1/sqrt(16*5*5)
    assert model.conv2.conv.weight.is_contiguous(memory_format=torch.channels_last)
    one = build_model(ModelConfig(name="cnn", hidden=(8,)))
    assert one.stage_names == ["conv1", "logits"] and one(torch.rand(3, 784)).shape == (3, 10)


def test_cnn_needs_one_or_two_blocks():
    from mnistlab.config import resolve

    with pytest.raises(ConfigError, match="one or two convolution blocks"):
        resolve("speedrun", None, ["model.hidden=8,16,32"])


def test_the_cnn_pooling_first_normalises_the_pooled_map():
    """``model.pool_first``: conv → pool → batch norm → ReLU in each block; same parameters and
    output shape as the default order, batch norm over a quarter of the values."""
    lite = build_model(preset_config("speedrun-lite").model, seed=1)
    pool = build_model(preset_config("speedrun-pool").model, seed=1)
    block = pool.conv1  # type: ignore[union-attr]
    names = [n for n in block._modules if n in ("conv", "pool", "norm", "relu")]
    assert names == ["conv", "pool", "norm", "relu"]
    assert [k for k, _ in lite.state_dict().items()] == [k for k, _ in pool.state_dict().items()]
    seen: dict[str, tuple[int, ...]] = {}

    def record(module, inputs, output):
        seen["shape"] = tuple(inputs[0].shape)

    block.norm.register_forward_hook(record)
    out = pool(torch.rand(3, 784))
    assert out.shape == (3, 10) and seen["shape"] == (3, 8, 12, 12)
