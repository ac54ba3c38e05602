"""Build a model from ``ModelConfig`` with the classic programs' initialisation.

Inputs are always flat ``[N, 784]`` float images in [0, 1], as TensorFlow's ``input_data`` gave
them; LeNet's first stage reshapes to ``[N, 1, 28, 28]`` itself.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from mnistlab.config import ModelConfig

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE


class StagedModel(nn.Sequential):
    """Named stages applied in order. ``model.stage_names`` lists them; slicing keeps names."""

    @property
    def stage_names(self) -> list[str]:
        return [name for name, _ in self.named_children()]


def weight_names(model: nn.Module) -> list[str]:
    """Names of the weight matrices and kernels (the parameters L2 applies to); biases excluded."""
    return [name for name, p in model.named_parameters() if p.ndim >= 2]


def _dense(n_in: int, n_out: int, relu: bool) -> nn.Module:
    layers: OrderedDict[str, nn.Module] = OrderedDict(linear=nn.Linear(n_in, n_out))
    if relu:
        layers["relu"] = nn.ReLU()
    return nn.Sequential(layers)


def _conv_block(c_in: int, c_out: int) -> OrderedDict[str, nn.Module]:
    return OrderedDict(
        conv=nn.Conv2d(c_in, c_out, kernel_size=5, padding=2),
        relu=nn.ReLU(),
        pool=nn.MaxPool2d(2),
    )


def _lenet_stages(config: ModelConfig, num_classes: int) -> OrderedDict[str, nn.Module]:
    conv1 = _conv_block(1, 32)
    conv1.update({"unflatten": nn.Unflatten(1, (1, IMAGE_SIDE, IMAGE_SIDE))})
    conv1.move_to_end("unflatten", last=False)
    fc = config.hidden[0]
    dense: OrderedDict[str, nn.Module] = OrderedDict(
        flatten=nn.Flatten(), linear=nn.Linear(64 * 7 * 7, fc), relu=nn.ReLU()
    )
    if config.dropout > 0:
        dense["dropout"] = nn.Dropout(config.dropout)
    return OrderedDict(
        conv1=nn.Sequential(conv1),
        conv2=nn.Sequential(_conv_block(32, 64)),
        fc=nn.Sequential(dense),
        logits=nn.Linear(fc, num_classes),
    )


def _initialise(model: nn.Module, config: ModelConfig, generator: torch.Generator) -> None:
    """TensorFlow's initialisers: weights ~ N(0, std) or truncated at 2 std; biases constant."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim < 2:
                p.fill_(config.bias_init)
            elif config.init == "zeros":
                p.zero_()
            elif config.init == "truncated_normal":
                std = config.init_std
                nn.init.trunc_normal_(p, 0.0, std, -2 * std, 2 * std, generator=generator)
            else:
                p.normal_(0.0, config.init_std, generator=generator)


def build_model(config: ModelConfig, num_classes: int = 10, seed: int = 0) -> StagedModel:
    """A freshly initialised model on the CPU; the same ``seed`` gives the same weights."""
    stages: OrderedDict[str, nn.Module]
    if config.name == "softmax":
        stages = OrderedDict(logits=nn.Linear(NUM_PIXELS, num_classes))
    elif config.name == "mlp":
        stages = OrderedDict()
        width = NUM_PIXELS
        for i, size in enumerate(config.hidden, start=1):
            stages[f"hidden{i}"] = _dense(width, size, relu=True)
            width = size
        stages["logits"] = nn.Linear(width, num_classes)
    elif config.name == "lenet":
        stages = _lenet_stages(config, num_classes)
    else:
        raise ValueError(f"unknown model {config.name!r}")
    model = StagedModel(stages)
    generator = torch.Generator().manual_seed(seed)
    _initialise(model, config, generator)
    return model
