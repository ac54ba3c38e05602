"""Forged checkpoints: a real training state with one defect, written with a valid sha256.

What an attacker (or a careless script) can do: the checksum proves a file whole, not honest,
and anyone can compute it again. ``forge`` writes a state as a format-2 file (safetensors +
JSON) or a format-1 file (magic line, JSON header, ``torch.save``), each with its checksum
recomputed, so that only the checks of what the state *means* stand between it and the model.
``DEFECTS`` names each edit the hostile-checkpoint tests run through every reader.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MAGIC = b"MNISTLAB-CHECKPOINT\n"


def _v1_bytes(state: dict[str, Any], header: dict[str, Any]) -> bytes:
    """The format-1 layout, written here independently of mnistlab's writer."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = {"format_version": 1, **header, "payload_bytes": len(payload)}
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    h.update(payload)
    header["sha256"] = h.hexdigest()
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload


def _header(state: dict[str, Any]) -> dict[str, Any]:
    """What mnistlab's writer puts in a header, taken from the (possibly forged) state."""
    step = state.get("step") if isinstance(state, dict) else None
    config = state.get("config") if isinstance(state, dict) else None
    return {"step": step, "config": config, "mnistlab_version": "0.1.0"}


def forge(
    path: Path, state: Any, *, version: int = 2, header: dict[str, Any] | None = None
) -> Path:
    """Write ``state`` to ``path`` as a checkpoint of ``version`` whose checksum is valid."""
    info = _header(state) if header is None else header
    if version == 1:
        path.write_bytes(_v1_bytes(state, info))
    else:
        from mnistlab.io.checkpoint import container

        path.write_bytes(container.pack(state, info))
    return path


def forge_state_text(path: Path, text: str, tensors: dict[str, torch.Tensor]) -> Path:
    """A format-2 file whose state JSON is ``text`` as given (JSON ``pack`` would never write)."""
    from safetensors.torch import save

    from mnistlab.io.checkpoint import container

    metadata = {
        "format": container.FORMAT_NAME,
        "mnistlab": json.dumps({"format_version": 2}),
        "state": text,
    }
    metadata["sha256"] = container._digest(metadata, tensors)
    path.write_bytes(save(tensors, metadata=metadata))
    return path


# -- the defects ---------------------------------------------------------------------------------
Edit = Callable[[dict[str, Any]], Any]


def _set(*keys: str, value: Any) -> Edit:
    """An edit that sets ``state[k1][k2]... = value``."""

    def edit(state: dict[str, Any]) -> dict[str, Any]:
        target = state
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value() if callable(value) else value
        return state

    return edit


def _poison(value: float, *keys: str) -> Edit:
    def edit(state: dict[str, Any]) -> dict[str, Any]:
        table = state
        for key in keys:
            table = table[key]
        name = next(iter(table))
        table[name] = table[name].clone()
        table[name].view(-1)[0] = value
        return state

    return edit


def _whole(value: Any) -> Edit:
    return lambda state: value


def _drop(*keys: str) -> Edit:
    def edit(state: dict[str, Any]) -> dict[str, Any]:
        target = state
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
        return state

    return edit


def _rename_first(*keys: str) -> Edit:
    def edit(state: dict[str, Any]) -> dict[str, Any]:
        table = state
        for key in keys:
            table = table[key]
        name = next(iter(table))
        table["extra." + name] = table.pop(name)
        return state

    return edit


DEFECTS: dict[str, Edit] = {
    # issue 17, section 3, one by one
    "logits weight (10**9, 0)": _set("model", "logits.weight", value=lambda: torch.zeros(10**9, 0)),
    "model.hidden=[10**9]": _set("config", "model", "hidden", value=[10**9]),
    "train.seed=10**30": _set("config", "train", "seed", value=10**30),
    "step 'abc'": _set("step", value="abc"),
    "step -5": _set("step", value=-5),
    "config a list": _set("config", value=[1, 2]),
    "ema a list": _set("ema", value=[1, 2]),
    "a weight that is a string": _set("model", "logits.weight", value="weights"),
    "NaN weights": _poison(math.nan, "model"),
    "NaN EMA shadows": _poison(math.nan, "ema", "shadows"),
    # beyond the list: every other part of the state
    "inf in the optimizer": _poison(math.inf, "optimizer", "tensors", "momentum_buffer"),
    "step True": _set("step", value=True),
    "step 10**30": _set("step", value=10**30),
    "not a state at all": _whole([1, 2, 3]),
    "no optimizer": _drop("optimizer"),
    "config with an unknown section": _set("config", "evil", value={"x": 1}),
    "model.name resnet": _set("config", "model", "name", value="resnet"),
    "model.hidden text": _set("config", "model", "hidden", value="abc"),
    "optim.lr NaN": _set("config", "optim", "lr", value=math.nan),
    "a float64 weight": _set(
        "model", "logits.bias", value=lambda: torch.zeros(10, dtype=torch.float64)
    ),
    "a missing tensor": _drop("model", "logits.bias"),
    "an extra tensor": _rename_first("model"),
    "a shadow of the wrong shape": _set(
        "ema", "shadows", "logits.bias", value=lambda: torch.zeros(11)
    ),
    "ema.num_updates 'x'": _set("ema", "num_updates", value="x"),
    "ema.num_updates -1": _set("ema", "num_updates", value=-1),
    "ema.num_updates beyond the step": _set("ema", "num_updates", value=10**6),
    "ema gone though ema_decay>0": _set("ema", value=None),
    "optimizer a string": _set("optimizer", value="sgd"),
    "optimizer scalar NaN": _set(
        "optimizer", "scalars", value=lambda: {"logits.bias": {"step": torch.tensor(math.nan)}}
    ),
    "data.perm out of range": _set("data", "perm", value=lambda: torch.full((3500,), 10**9)),
    "data.perm a list": _set("data", "perm", value=[0, 1, 2]),
    "data.batch_size 0": _set("data", "batch_size", value=0),
    "data.index_in_epoch beyond": _set("data", "index_in_epoch", value=10**6),
    "data.generator wrong size": _set(
        "data", "generator", value=lambda: torch.zeros(7, dtype=torch.uint8)
    ),
    "rng.torch a string": _set("rng", "torch", value="seed"),
    "rng.numpy.pos 10**6": _set("rng", "numpy", "pos", value=10**6),
    "rng.numpy.keys wrong shape": _set(
        "rng", "numpy", "keys", value=lambda: torch.zeros(3, dtype=torch.int64)
    ),
    "rng.cuda a tensor": _set("rng", "cuda", value=lambda: torch.zeros(3)),
    "metrics.validation_accuracy 5": _set("metrics", "validation_accuracy", value=5.0),
    "metrics.best_step 'x'": _set("metrics", "best_step", value="x"),
    "threads -3": _set("threads", value=-3),
    "buffers the model lacks": _set("buffers", value=lambda: {"norm.running_mean": torch.zeros(2)}),
}
"""Each edit of a valid seed-mlp state (``model.hidden=4``, momentum, EMA; step 4) that no
reader may accept."""


def forged(state: dict[str, Any], defect: str) -> Any:
    """A deep copy of ``state`` with ``defect`` applied."""
    return DEFECTS[defect](copy.deepcopy(state))
