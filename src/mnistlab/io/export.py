"""Export a trained model for other tools: safetensors, ONNX or TorchScript.

Every format takes what the model takes: float32 images flattened to ``[N, C*H*W]`` in [0, 1]
(pixel / 255, light ink on black, as MNIST), and gives ``[N, classes]`` logits. ONNX needs the
optional extra ``pip install mnistlab[export]`` (onnx, onnxscript; onnxruntime to run it).
Files are written to a temporary name beside the target and renamed, like checkpoints.
"""

from __future__ import annotations

import io
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mnistlab.atomic import atomic_path, atomic_write, check_writable
from mnistlab.config.schema import INPUT_SHAPE
from mnistlab.errors import CheckpointError

FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
WHAT = "export file"


def export_safetensors(model: nn.Module, path: Path, metadata: dict[str, Any]) -> Path:
    """Weights by parameter name, with the config as JSON metadata (rebuild with ``build_model``)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    return atomic_write(path, save(tensors, metadata=text), what=WHAT, error=CheckpointError)


def export_onnx(
    model: nn.Module,
    path: Path,
    metadata: dict[str, Any],
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
) -> Path:
    """An ONNX graph taking flat ``[N, C*H*W]`` images of ``input_shape``, with a dynamic batch
    dimension (torch.export + onnxscript)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise CheckpointError(
            "ONNX export needs the optional extra: pip install 'mnistlab[export]' "
            "(onnx, onnxscript, onnxruntime)"
        ) from None
    example = torch.zeros(2, math.prod(input_shape))
    # The exporter logs that optional torchvision ops are absent; irrelevant to these models.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            None,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
        )
    assert program is not None
    for key, value in metadata.items():
        program.model.metadata_props[key] = value if isinstance(value, str) else json.dumps(value)
    with atomic_path(path, what=WHAT, error=CheckpointError) as tmp:
        program.save(str(tmp))
    return path


def export_torchscript(model: nn.Module, path: Path, metadata: dict[str, Any]) -> Path:
    """A scripted module loadable with ``torch.jit.load`` (no mnistlab needed)."""
    buffer = io.BytesIO()
    extra = {"mnistlab.json": json.dumps(metadata)}
    with warnings.catch_warnings():  # deprecated in favour of torch.export, still widely loaded
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), buffer, _extra_files=extra)
    return atomic_write(path, buffer.getvalue(), what=WHAT, error=CheckpointError)


def export_model(model: nn.Module, fmt: str, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``model`` (in eval mode) as ``fmt`` to ``path``."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown export format {fmt!r}: choose {', '.join(FORMATS)}")
    check_writable(path, what=WHAT, error=CheckpointError)  # before an export that takes seconds
    model.eval()
    writer = {
        "safetensors": export_safetensors,
        "onnx": export_onnx,
        "torchscript": export_torchscript,
    }[fmt]
    return writer(model, Path(path), metadata)
