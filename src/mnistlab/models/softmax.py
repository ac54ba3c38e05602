"""Softmax regression: one linear layer from the flattened image to the class scores."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from mnistlab.config import ModelConfig
from mnistlab.config.model_rules import Shape


def stages(
    config: ModelConfig, input_shape: Shape, num_classes: int
) -> OrderedDict[str, nn.Module]:
    c, h, w = input_shape
    return OrderedDict(logits=nn.Linear(c * h * w, num_classes))
