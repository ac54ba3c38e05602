"""Optimizers by name: plain SGD (the classic programs), momentum SGD (also Nesterov's), Adam."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mnistlab.config import OptimConfig


def build_optimizer(params: Iterable[torch.Tensor], config: OptimConfig) -> torch.optim.Optimizer:
    params = list(params)
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr)
    if config.name == "momentum":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    if config.name == "nesterov":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True)
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    raise ValueError(f"unknown optimizer {config.name!r}")
