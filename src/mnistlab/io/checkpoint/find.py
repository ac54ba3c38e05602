"""Where a run keeps its checkpoints, and which file ``RUN``, ``RUN:best`` or ``FILE`` means.

A run folder keeps ``checkpoints/step-000500.pt`` ... (the last ``checkpoint.keep``) and
``checkpoints/best.pt`` (the state with the best validation accuracy). ``load_model`` rebuilds the
model a checkpoint holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mnistlab.config.schema import INPUT_SHAPE
from mnistlab.errors import CheckpointError
from mnistlab.io.checkpoint.fileformat import (
    BEST_NAME,
    CHECKPOINT_DIR,
    STEP_PATTERN,
    Checkpoint,
    load_checkpoint,
)
from mnistlab.io.checkpoint.trust import WEIGHTS_ONLY, num_classes
from mnistlab.models import StagedModel, build_model


def step_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the ``step-*.pt`` files in a checkpoints folder, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := STEP_PATTERN.match(p.name)) and p.is_file()
    ]
    return sorted(found)


def checkpoint_folder(run_or_folder: str | Path) -> Path:
    path = Path(run_or_folder)
    return path if path.name == CHECKPOINT_DIR else path / CHECKPOINT_DIR


def resolve_checkpoint(spec: str | Path) -> Path:
    """A checkpoint file for ``FILE``, ``RUN`` (its latest), ``RUN:best`` or ``pretrained:NAME``
    (a model that comes with mnistlab)."""
    from mnistlab import pretrained

    if pretrained.is_pretrained(spec):
        return pretrained.checkpoint_path(spec)
    text = str(spec)
    best = text.endswith(":best") and not Path(text).exists()
    path = Path(text[: -len(":best")] if best else text)
    if path.is_file():
        if best:
            raise CheckpointError(f"{text}: ':best' goes after a run folder, not a file")
        return path
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} does not exist (give a checkpoint file, a run folder, or RUN:best)"
        )
    folder = checkpoint_folder(path)
    if best:
        if not (folder / BEST_NAME).is_file():
            raise CheckpointError(
                f"run {path} has no best checkpoint yet ({folder / BEST_NAME}); "
                "it is written at the first validation"
            )
        return folder / BEST_NAME
    steps = step_checkpoints(folder)
    if steps:
        return steps[-1][1]
    if (folder / BEST_NAME).is_file():
        return folder / BEST_NAME
    raise CheckpointError(
        f"run folder {path} holds no checkpoints (looked in {folder}); train "
        "with --run-dir to keep some"
    )


def averaged(state: dict[str, Any], *, use_ema: bool = True) -> bool:
    """Whether the weights ``saved_weights`` gives for ``state`` are the moving average's."""
    if state.get("kind") == WEIGHTS_ONLY:
        return bool(state["weights"] == "ema")
    return bool(use_ema and (state.get("ema") or {}).get("shadows"))


def saved_weights(state: dict[str, Any], *, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """A model's tensors from a saved ``Run.state_dict()``, ready for ``load_state_dict``: the
    moving average's shadows (``use_ema``, when the run kept them) or the raw parameters, with
    the model's buffers (batch norm's running statistics) beside them. A weights-only file has
    one set of weights, whichever it kept."""
    shadows = (state.get("ema") or {}).get("shadows")
    params = shadows if averaged(state, use_ema=use_ema) and shadows else state["model"]
    return {**params, **(state.get("buffers") or {})}


def weights_only(state: dict[str, Any], *, use_ema: bool = True) -> dict[str, Any]:
    """``state`` as a weights-only file holds it: the step, settings and metrics, and the
    weights a model is used with (the moving average's with ``use_ema`` where the run kept one,
    as ``load_model`` reads them) with batch norm's statistics; no optimizer state, data order
    or random state, so it is a quarter to half the size and cannot be resumed."""
    if state.get("kind") == WEIGHTS_ONLY:
        return state
    ema = averaged(state, use_ema=use_ema)
    return {
        "kind": WEIGHTS_ONLY,
        "step": state["step"],
        "config": state["config"],
        "model": state["ema"]["shadows"] if ema else state["model"],
        "buffers": state.get("buffers"),
        "weights": "ema" if ema else "raw",
        "metrics": state["metrics"],
    }


def load_model(
    spec: str | Path, *, use_ema: bool = True, input_shape: tuple[int, int, int] = INPUT_SHAPE
) -> tuple[StagedModel, Checkpoint]:
    """The model saved in a checkpoint, rebuilt from its config for images of ``input_shape`` (every
    registered dataset's is the default), in eval mode on the CPU. EMA shadows by default (what the
    classic programs evaluate); raw parameters if ``use_ema`` is off or the run kept no average.
    Everything in the file is checked before the model is built (``trust.check_state``), so
    what is built is the size the file's own tensors are."""
    ckpt = load_checkpoint(resolve_checkpoint(spec), input_shape=input_shape)
    state = ckpt.state
    if not use_ema and state.get("kind") == WEIGHTS_ONLY and state["weights"] == "ema":
        raise CheckpointError(
            f"{ckpt.path} holds only its moving average's weights (a weights-only file): the "
            "raw weights are not in it; drop --raw-weights / raw_weights=True"
        )
    tensors = saved_weights(state, use_ema=use_ema)
    config = ckpt.config
    classes = num_classes(tensors)
    if classes is None:
        raise CheckpointError(f"{ckpt.path} holds no logits layer; not an mnistlab model")
    model = build_model(
        config.model,
        num_classes=classes,
        seed=config.train.seed,
        input_shape=input_shape,
    )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"the weights in {ckpt.path} do not fit a {config.model.name} "
            f"model: {str(exc).splitlines()[0]}"
        ) from None
    model.eval()
    return model, ckpt
