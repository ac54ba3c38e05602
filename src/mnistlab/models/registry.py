"""The model registry: ``name -> ModelSpec``, the one place a model is made known.

Each model lives in its own file (``softmax.py``, ``mlp.py``, ``lenet.py``, ``cnn.py``) as a
function that returns its ordered stages for (settings, input shape, number of classes), and is
registered here with one line. Validation needs to know a model before torch builds anything (which ``hidden``
sizes fit, how many parameters it has), so those rules are its entry in
``mnistlab.config.model_rules``; this module checks at import that both tables name the same
models. ``docs/architecture.md`` walks through adding one.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from mnistlab.config import ModelConfig
from mnistlab.config.model_rules import MODEL_RULES, Shape
from mnistlab.errors import ConfigError
from mnistlab.models import cnn, lenet, mlp, softmax

Stages = OrderedDict[str, nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    stages: Callable[[ModelConfig, Shape, int], Stages]
    """The model's named stages for (settings, input shape, number of classes), in order."""


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Make ``spec`` buildable by name; its validation rules must be in ``MODEL_RULES``."""
    if spec.name not in MODEL_RULES:
        raise RuntimeError(
            f"model {spec.name!r} has no entry in mnistlab.config.model_rules.MODEL_RULES"
        )
    MODELS[spec.name] = spec
    return spec


def model_spec(name: str) -> ModelSpec:
    """The registered model called ``name``; a ``ConfigError`` naming the nearest one otherwise."""
    if name not in MODELS:
        near = difflib.get_close_matches(name, list(MODELS), n=1, cutoff=0.4)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"model.name must be one of {', '.join(MODELS)}; got {name!r}{hint}")
    return MODELS[name]


register_model(ModelSpec("softmax", softmax.stages))
register_model(ModelSpec("mlp", mlp.stages))
register_model(ModelSpec("lenet", lenet.stages))
register_model(ModelSpec("cnn", cnn.stages))

if set(MODELS) != set(MODEL_RULES):  # pragma: no cover - a half-registered model
    raise RuntimeError(
        f"models with validation rules but no builder: {sorted(set(MODEL_RULES) - set(MODELS))}"
    )
