"""LeNet-5 style CNN: two 5x5 convolution blocks (32 and 64 channels, each pooled by 2), one dense
layer of ``model.hidden[0]`` units (dropout optional) and the logits. Its first stage unflattens
the flat input to ``[N, C, H, W]`` itself, so every model takes the same flat batches."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from mnistlab.config import ModelConfig
from mnistlab.config.model_rules import Shape


def _conv_block(c_in: int, c_out: int) -> OrderedDict[str, nn.Module]:
    return OrderedDict(
        conv=nn.Conv2d(c_in, c_out, kernel_size=5, padding=2),
        relu=nn.ReLU(),
        pool=nn.MaxPool2d(2),
    )


def stages(
    config: ModelConfig, input_shape: Shape, num_classes: int
) -> OrderedDict[str, nn.Module]:
    c, h, w = input_shape
    conv1 = _conv_block(c, 32)
    conv1.update({"unflatten": nn.Unflatten(1, (c, h, w))})
    conv1.move_to_end("unflatten", last=False)
    fc = config.hidden[0]
    dense: OrderedDict[str, nn.Module] = OrderedDict(
        flatten=nn.Flatten(), linear=nn.Linear(64 * (h // 4) * (w // 4), fc), relu=nn.ReLU()
    )
    if config.dropout > 0:
        dense["dropout"] = nn.Dropout(config.dropout)
    return OrderedDict(
        conv1=nn.Sequential(conv1),
        conv2=nn.Sequential(_conv_block(32, 64)),
        fc=nn.Sequential(dense),
        logits=nn.Linear(fc, num_classes),
    )
