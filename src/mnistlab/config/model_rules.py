"""What settings validation knows about each registered model, without building it.

The model registry (``mnistlab.models.registry``) maps a name to the builder of its stages; this
table holds the other half of a registration that ``validate`` needs before anything is allocated:
which ``model.hidden`` values make sense, how many parameters the model will have and how large
its layers' outputs are (for the memory check). It sits in ``config`` because ``config`` may import nothing above it; the registry
refuses, at import, a model registered in one table and not the other. Adding a model: see
``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mnistlab.config.schema import INPUT_SHAPE, ModelConfig

Shape = tuple[int, int, int]
"""(channels, height, width) of one image, as on a dataset's ``DatasetSpec.input_shape``."""


@dataclass(frozen=True)
class ModelRules:
    name: str
    parameter_count: Callable[[ModelConfig, Shape, int], int]
    """Parameters ``build_model`` makes for (settings, input shape, number of classes)."""
    hidden_error: Callable[[tuple[int, ...]], str | None] = lambda hidden: None
    """Why ``model.hidden`` does not fit this model (``None``: it fits)."""
    batch_statistics: bool = False
    """The model normalises with statistics of the batch (batch norm): it trains in one process
    (splitting a batch across ranks or into micro-batches would change its arithmetic)."""
    activations: Callable[[ModelConfig, Shape, int], list[int]] = field(kw_only=True)
    """Numbers one image makes on its way through the model, one entry per layer output in
    order (a convolution, its ReLU, its pooling, ...; the logits and their log-softmax last):
    what the memory check counts per example of a batch."""


def _dense_count(widths: tuple[int, ...], inputs: int, classes: int) -> int:
    total, width = 0, inputs
    for size in (*widths, classes):
        total += width * size + size
        width = size
    return total


def _inputs(shape: Shape) -> int:
    c, h, w = shape
    return c * h * w


def _dense_outputs(widths: tuple[int, ...], classes: int) -> list[int]:
    """Each hidden layer's linear output and its ReLU, then the logits and their log-softmax."""
    return [size for width in widths for size in (width, width)] + [classes, classes]


def _lenet_outputs(model: ModelConfig, shape: Shape, classes: int) -> list[int]:
    c, h, w = shape
    fc = model.hidden[0]
    conv1 = [32 * h * w, 32 * h * w, 32 * (h // 2) * (w // 2)]  # convolution, ReLU, pooling
    conv2 = [64 * (h // 2) * (w // 2)] * 2 + [64 * (h // 4) * (w // 4)]
    dense = [fc, fc] + ([fc] if model.dropout > 0 else [])
    return conv1 + conv2 + dense + [classes, classes]


def _lenet_count(model: ModelConfig, shape: Shape, classes: int) -> int:
    c, h, w = shape
    fc = model.hidden[0]
    convs = (5 * 5 * c * 32 + 32) + (5 * 5 * 32 * 64 + 64)
    return convs + (64 * (h // 4) * (w // 4) * fc + fc) + (fc * classes + classes)


def _cnn_side(side: int, blocks: int) -> int:
    for _ in range(blocks):  # a 5x5 convolution without padding, then 2x2 pooling
        side = (side - 4) // 2
    return side


def cnn_features(widths: tuple[int, ...], shape: Shape) -> int:
    """Features the ``cnn`` model's last block hands to its linear layer."""
    _, h, w = shape
    return widths[-1] * _cnn_side(h, len(widths)) * _cnn_side(w, len(widths))


def _cnn_outputs(model: ModelConfig, shape: Shape, classes: int) -> list[int]:
    c, h, w = shape
    sizes = [c * h * w]  # the channels-last copy of the input
    for width in model.hidden:  # convolution, batch norm, ReLU (unpadded 5x5), then pooling
        h, w = h - 4, w - 4
        conv = width * h * w
        h, w = h // 2, w // 2
        pooled = width * h * w
        # model.pool_first: convolution, pooling, then batch norm and ReLU on the pooled map
        sizes += [conv, pooled, pooled, pooled] if model.pool_first else [conv] * 3 + [pooled]
    return sizes + [classes, classes]


def _cnn_count(model: ModelConfig, shape: Shape, classes: int) -> int:
    total, c = 0, shape[0]
    for width in model.hidden:
        total += 5 * 5 * c * width + 2 * width  # kernel, then batch norm's scale and shift
        c = width
    return total + cnn_features(model.hidden, shape) * classes + classes


MODEL_RULES: dict[str, ModelRules] = {
    rules.name: rules
    for rules in (
        ModelRules(
            "softmax",
            lambda m, s, k: _dense_count((), _inputs(s), k),
            activations=lambda m, s, k: _dense_outputs((), k),
        ),
        ModelRules(
            "mlp",
            lambda m, s, k: _dense_count(m.hidden, _inputs(s), k),
            lambda h: None if h else "must name at least one layer for the MLP (e.g. 500)",
            activations=lambda m, s, k: _dense_outputs(m.hidden, k),
        ),
        ModelRules(
            "lenet",
            _lenet_count,
            lambda h: (
                None if len(h) == 1 else f"for lenet is the size of its one dense layer; got {h}"
            ),
            activations=_lenet_outputs,
        ),
        ModelRules(
            "cnn",
            _cnn_count,
            lambda h: (
                None
                if len(h) in (1, 2)
                else f"for cnn is the widths of its one or two convolution blocks; got {h}"
            ),
            batch_statistics=True,
            activations=_cnn_outputs,
        ),
    )
}


def parameter_count(
    model: ModelConfig, num_classes: int = 10, input_shape: Shape = INPUT_SHAPE
) -> int:
    """How many parameters ``models.build_model`` makes for ``model`` (without allocating)."""
    return MODEL_RULES[model.name].parameter_count(model, input_shape, num_classes)


def layer_outputs(
    model: ModelConfig, num_classes: int = 10, input_shape: Shape = INPUT_SHAPE
) -> list[int]:
    """Numbers one image makes in each layer of ``model``, in order (``ModelRules.activations``)."""
    return MODEL_RULES[model.name].activations(model, input_shape, num_classes)
