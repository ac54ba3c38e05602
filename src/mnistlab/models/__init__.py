"""The classifiers: softmax regression, the MLP and a LeNet-5 style CNN.

Every model is a ``StagedModel``: an ordered list of named stages run one after the other, so the
pipeline strategy can cut it between stages and parameter names stay the same in every mode.
Models are pure ``nn.Module``s: no device choice, no distributed code, no logging.
"""

from mnistlab.models.build import StagedModel, build_model, weight_names

__all__ = ["StagedModel", "build_model", "weight_names"]
