"""Build a registered model from ``ModelConfig`` with the classic programs' initialisation.

Inputs are always flat ``[N, C*H*W]`` float images in [0, 1] (``[N, 784]`` for the MNIST family),
as TensorFlow's ``input_data`` gave them; a convolutional model's first stage unflattens them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mnistlab.config import ModelConfig
from mnistlab.config.model_rules import Shape
from mnistlab.config.schema import INPUT_SHAPE
from mnistlab.models.registry import model_spec


class StagedModel(nn.Sequential):
    """Named stages applied in order. ``model.stage_names`` lists them; slicing keeps names."""

    @property
    def stage_names(self) -> list[str]:
        return [name for name, _ in self.named_children()]


def _initialise(model: nn.Module, config: ModelConfig, generator: torch.Generator) -> None:
    """TensorFlow's initialisers: weights ~ N(0, std) or truncated at 2 std (or PyTorch's
    ``fan_in`` bound); biases constant.
    Batch norm keeps its own start (scale 1, shift 0): it is a normalisation, not a layer's bias."""
    norms = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase)
        for p in m.parameters(recurse=False)
    }
    with torch.no_grad():
        for _, p in model.named_parameters():
            if id(p) in norms:
                continue
            if p.ndim < 2:
                p.fill_(config.bias_init)
            elif config.init == "zeros":
                p.zero_()
            elif config.init == "fan_in":
                bound = 1 / math.sqrt(p[0].numel())  # the inputs of one unit: in × kernel
                nn.init.uniform_(p, -bound, bound, generator=generator)
            elif config.init == "truncated_normal":
                std = config.init_std
                nn.init.trunc_normal_(p, 0.0, std, -2 * std, 2 * std, generator=generator)
            else:
                p.normal_(0.0, config.init_std, generator=generator)


def build_model(
    config: ModelConfig, num_classes: int = 10, seed: int = 0, input_shape: Shape = INPUT_SHAPE
) -> StagedModel:
    """A freshly initialised model on the CPU for images of ``input_shape`` (channels, height,
    width: the dataset's ``DatasetSpec.input_shape``); the same ``seed`` gives the same weights."""
    model = StagedModel(model_spec(config.name).stages(config, input_shape, num_classes))
    generator = torch.Generator().manual_seed(seed)
    _initialise(model, config, generator)
    return model
