"""Checkpoint format 1, kept so that every file written before format 2 still loads.

A format-1 file is three parts::

    MNISTLAB-CHECKPOINT\\n          magic line: "this is ours"
    {"format_version": 1, ...}\\n    one JSON line: versions, step, accuracy, payload size, sha256
    <payload>                       ``torch.save`` of ``Run.state_dict()``

The sha256 covers the header and the payload, so a truncated or bit-flipped file is caught before
anything is unpickled, and the payload is only ever read with ``torch.load(weights_only=True)``,
which refuses any object that is not a tensor or a plain value. Training writes format 2
(``container.py``); this writer stays for the tests and ``benchmarks/checkpoints.py``, which
compare the two.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import torch

from mnistlab.errors import CheckpointError

MAGIC = b"MNISTLAB-CHECKPOINT\n"
VERSION = 1
MAX_HEADER = 64 * 1024


def digest(header: dict[str, Any], payload: bytes | memoryview) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    h.update(payload)
    return h.hexdigest()


def pack(payload: bytes, info: dict[str, Any]) -> list[bytes]:
    """The file's parts for ``payload`` (``torch.save`` bytes) with header fields ``info``."""
    header = {"format_version": VERSION, **info, "payload_bytes": len(payload)}
    header["sha256"] = digest(header, payload)
    return [MAGIC, json.dumps(header, sort_keys=True).encode() + b"\n", payload]


def serialize(state: dict[str, Any], info: dict[str, Any]) -> list[bytes]:
    """``state`` (a ``Run.state_dict()``) as the parts of a format-1 file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return pack(buffer.getvalue(), info)


def parse_header(head: bytes, path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a file whose first bytes ``head`` start with ``MAGIC``, and the offset
    where its payload starts."""
    end = head.find(b"\n", len(MAGIC))
    try:
        if end < 0:
            raise ValueError("no end of header")
        header = json.loads(head[len(MAGIC) : end])
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        int(header["format_version"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(
            f"checkpoint {path} is damaged (its header cannot be read); use an "
            "earlier checkpoint of the run"
        ) from None
    return header, end + 1


def read_state(path: Path, header: dict[str, Any], payload: bytes | memoryview) -> dict[str, Any]:
    """The state in a format-1 file's ``payload`` (the bytes after its header), checked against
    its size and sha256 before it is unpickled (tensors and plain values only, onto the CPU).
    ``header`` loses its ``sha256``."""
    expected = header.get("payload_bytes")
    if not isinstance(expected, int) or len(payload) != expected:
        raise CheckpointError(
            f"checkpoint {path} is truncated or damaged: {len(payload):,} bytes of data where "
            f"{expected!r:.20} were written; use an earlier checkpoint of the run"
        )
    claimed = header.pop("sha256", None)
    if claimed != digest(header, payload):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its sha256 checksum does not match (a flipped bit or "
            "a partial copy); use an earlier checkpoint of the run"
        )
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler refuses anything that is not weights
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
        why = next((line for line in lines if "Unsupported" in line or "GLOBAL" in line), None)
        if why is None:
            raise CheckpointError(
                f"checkpoint {path} cannot be read ({type(exc).__name__}: "
                f"{(lines or [''])[0][:120]}); it is not a checkpoint mnistlab wrote"
            ) from None
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain values, "
            f"which could run code ({why.split(' Please')[0][:160]}); it is not a checkpoint "
            "mnistlab wrote"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} does not hold a training state (step, model, config)"
        )
    return state
