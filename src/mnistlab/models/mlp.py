"""The multi-layer perceptron: ReLU hidden layers of ``model.hidden`` sizes, then the logits."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from mnistlab.config import ModelConfig
from mnistlab.config.model_rules import Shape


def _dense(n_in: int, n_out: int) -> nn.Module:
    return nn.Sequential(OrderedDict(linear=nn.Linear(n_in, n_out), relu=nn.ReLU()))


def stages(
    config: ModelConfig, input_shape: Shape, num_classes: int
) -> OrderedDict[str, nn.Module]:
    c, h, w = input_shape
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    width = c * h * w
    for i, size in enumerate(config.hidden, start=1):
        layers[f"hidden{i}"] = _dense(width, size)
        width = size
    layers["logits"] = nn.Linear(width, num_classes)
    return layers
