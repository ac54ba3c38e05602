"""Checkpoint format 2: one safetensors file, a container that cannot hold code.

A safetensors file is an 8-byte length, a JSON header (each tensor's dtype, shape and byte range,
and a ``__metadata__`` table of strings) and the tensors' raw bytes. Reading one runs no code and
unpickles nothing, whatever the file holds; any safetensors reader (Python, Rust, JavaScript)
opens it without mnistlab. mnistlab keeps in ``__metadata__``:

- ``format``: ``mnistlab-checkpoint``;
- ``mnistlab``: JSON, what ``read_header`` returns: ``format_version`` 2, the mnistlab and torch
  versions, step, preset, config, validation accuracy;
- ``state``: JSON, ``Run.state_dict()`` with every tensor replaced by ``{"$tensor": NAME}``,
  ``NAME`` being its key in the file (its path in the state: ``model/logits.weight``,
  ``ema/shadows/logits.weight``, ``data/perm``, ``rng/torch`` ...); ``{"$tuple": [...]}``,
  ``{"$float": "nan"}`` and ``{"$items": [[key, value], ...]}`` (a table whose keys are not
  text) keep the values JSON has no word for;
- ``sha256``: over the other metadata and every tensor (name, dtype, shape, bytes), in name order.

A tensor comes back with the very bytes it was saved with, so a resume is as exact as from
format 1. The checks of what the state *means* are ``trust.py``'s.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch

from mnistlab.errors import CheckpointError

VERSION = 2
FORMAT_NAME = "mnistlab-checkpoint"
MAX_HEADER = 16 * 1024 * 1024
"""A larger JSON header is not one mnistlab wrote (seed-mlp's is about 6 KB)."""
MARKERS = ("$tensor", "$tuple", "$float", "$items")


def looks_like(head: bytes) -> bool:
    """Whether the first bytes of a file are a safetensors header's start."""
    return len(head) >= 9 and head[8:9] == b"{"


# -- the state as JSON and tensors -----------------------------------------------------------------
def _encode(obj: Any, path: tuple[str, ...], tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        name = "/".join(path) or "tensor"
        if name in tensors:
            raise CheckpointError(f"cannot save the state: two tensors would be named {name!r}")
        t = obj.detach().to("cpu").contiguous()
        storage = t.untyped_storage().data_ptr()
        if t.numel() and any(storage == o.untyped_storage().data_ptr() for o in tensors.values()):
            t = t.clone()  # safetensors keeps no two tensors in one memory
        tensors[name] = t
        return {"$tensor": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, (*path, k), tensors) for k, v in obj.items()}
        return {"$items": [[k, _encode(v, (*path, str(k)), tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"$float": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(
        f"cannot save the state: {'/'.join(path)} is a {type(obj).__name__}, which a "
        "checkpoint does not hold (tensors and plain values only)"
    )


class _Damaged(Exception):
    """A state text that is not what ``_encode`` writes (said by ``read`` with the path)."""


def _decode(obj: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, used) for v in obj]
    if not isinstance(obj, dict):
        return obj  # JSON's own scalars (its floats are finite: NaN tokens are refused)
    marker = next((k for k in obj if k.startswith("$")), None)
    if marker is None:
        return {k: _decode(v, tensors, used) for k, v in obj.items()}
    if len(obj) != 1 or marker not in MARKERS:
        raise _Damaged(f"an unknown entry {marker!r:.40}")
    value = obj[marker]
    if marker == "$tensor":
        if not isinstance(value, str) or value not in tensors or value in used:
            raise _Damaged(f"a reference to a tensor the file does not hold ({value!r:.60})")
        used.add(value)
        return tensors[value]
    if marker == "$float":
        if value not in ("nan", "inf", "-inf"):
            raise _Damaged(f"a number {value!r:.40}")
        return float(value)
    if not isinstance(value, list):
        raise _Damaged(f"{marker} holding {type(value).__name__}")
    if marker == "$tuple":
        return tuple(_decode(v, tensors, used) for v in value)
    items = {}
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2) or isinstance(pair[0], (list, dict)):
            raise _Damaged("a table entry that is not a [key, value] pair")
        items[pair[0]] = _decode(pair[1], tensors, used)
    return items


def _refuse_constant(name: str) -> float:
    raise _Damaged(f"the non-standard number {name}")


def _json(text: str) -> Any:
    return json.loads(text, parse_constant=_refuse_constant)


def _plain(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` (the header is plain JSON for any reader)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _digest(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(k for k in metadata if k != "sha256"):
        h.update(json.dumps([key, metadata[key]]).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


# -- writing and reading ---------------------------------------------------------------------------
def pack(state: dict[str, Any], info: dict[str, Any]) -> bytes:
    """``state`` (a ``Run.state_dict()``) as the bytes of a format-2 file with header ``info``."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, (), tensors)
    metadata = {
        "format": FORMAT_NAME,
        "mnistlab": json.dumps(_plain({"format_version": VERSION, **info}), sort_keys=True),
        "state": json.dumps(skeleton, allow_nan=False, separators=(",", ":")),
    }
    metadata["sha256"] = _digest(metadata, tensors)
    return save(tensors, metadata=metadata)


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is damaged ({why}); use an earlier checkpoint of the run"
    )


def _parse(head: bytes, path: Path) -> tuple[dict[str, Any], dict[str, str], int]:
    """(the safetensors header less its metadata, the metadata, where the tensor bytes start)
    from the first bytes of a file; a ``CheckpointError`` if they are not a format-2 file's."""
    size = int.from_bytes(head[:8], "little")
    if size > MAX_HEADER:
        raise _damaged(path, f"a header of {size:,} bytes, far more than mnistlab writes")
    if len(head) < 8 + size:
        raise CheckpointError(
            f"checkpoint {path} is truncated or damaged: it ends inside its header; use an "
            "earlier checkpoint of the run"
        )
    try:
        table = _json(head[8 : 8 + size].decode("utf-8"))
        metadata = table.pop("__metadata__", None) if isinstance(table, dict) else None
    except (ValueError, UnicodeDecodeError, RecursionError, _Damaged):
        raise _damaged(path, "its header cannot be read") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path} is a safetensors file but not an mnistlab checkpoint (an exported model "
            "holds weights only); give a file written by `mnistlab train` "
            "(RUN/checkpoints/step-*.pt) or a run folder"
        )
    if not all(isinstance(v, str) for v in metadata.values()):
        raise _damaged(path, "its metadata is not text")
    return table, metadata, 8 + size


def parse_header(head: bytes, path: Path) -> tuple[dict[str, Any], int]:
    """The ``mnistlab`` header of a format-2 file from its first bytes (at least the whole
    safetensors header), and the offset where the tensor bytes start."""
    _, metadata, offset = _parse(head, path)
    try:
        info = _json(metadata.get("mnistlab", ""))
        if not isinstance(info, dict):
            raise ValueError("not an object")
        int(info["format_version"])
    except (ValueError, KeyError, TypeError, RecursionError, _Damaged):
        raise _damaged(path, "its header cannot be read") from None
    return info, offset


def header_size(head: bytes) -> int:
    """Bytes from the file's start to the end of its safetensors header (8 + the length)."""
    return 8 + int.from_bytes(head[:8], "little")


def read_state(path: Path, data: bytes) -> dict[str, Any]:
    """The state a format-2 file (all of its bytes, ``data``) holds, checked against its size
    and sha256 first. Tensors come back on the CPU."""
    from safetensors.torch import load

    table, metadata, offset = _parse(data, path)
    try:
        end = max((int(e["data_offsets"][1]) for e in table.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise _damaged(path, "its table of tensors cannot be read") from None
    if len(data) != offset + end:
        raise CheckpointError(
            f"checkpoint {path} is truncated or damaged: {len(data) - offset:,} bytes of data "
            f"where {end:,} were written; use an earlier checkpoint of the run"
        )
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors' own checks: offsets, dtypes, sizes
        raise _damaged(path, f"{str(exc).splitlines()[0][:120]}") from None
    if metadata.get("sha256") != _digest(metadata, tensors):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its sha256 checksum does not match (a flipped bit or "
            "a partial copy); use an earlier checkpoint of the run"
        )
    used: set[str] = set()
    try:
        state = _decode(_json(metadata.get("state", "")), tensors, used)
    except (ValueError, RecursionError) as exc:
        raise _damaged(path, f"its state cannot be read: {str(exc)[:80]}") from None
    except _Damaged as exc:
        raise _damaged(path, f"its state holds {exc}") from None
    if set(tensors) - used:
        extra = sorted(set(tensors) - used)[0]
        raise _damaged(path, f"it holds a tensor {extra!r:.60} its state does not name")
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} does not hold a training state (step, model, config)"
        )
    return state
