"""The classifiers: softmax regression, the MLP and a LeNet-5 style CNN, one file each.

Every model is a ``StagedModel``: an ordered list of named stages run one after the other, so the
pipeline strategy can cut it between stages and parameter names stay the same in every mode.
Models are pure ``nn.Module``s: no device choice, no distributed code, no logging. A model is
made known by one line in ``registry.py`` (see ``docs/architecture.md``).
"""

from mnistlab.models.build import StagedModel, build_model
from mnistlab.models.registry import MODELS, ModelSpec, model_spec, register_model

__all__ = ["MODELS", "ModelSpec", "StagedModel", "build_model", "model_spec", "register_model"]
