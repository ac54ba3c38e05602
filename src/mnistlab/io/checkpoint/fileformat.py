"""The checkpoint file format: one self-checking file per saved step, written atomically, read without pickles.

A checkpoint file is three parts::

    MNISTLAB-CHECKPOINT\\n          magic line: "this is ours"
    {"format_version": 1, ...}\\n    one JSON line: versions, step, accuracy, payload size, sha256
    <payload>                       ``torch.save`` of ``Run.state_dict()`` (tensors and plain values)

Why this shape: the JSON header can be read (to list, pick the best, report versions) without
touching the payload; the sha256 covers the header and the payload, so a truncated or bit-flipped
file is caught before anything is unpickled; and the payload is only ever read with
``torch.load(weights_only=True)``, which refuses any object that is not a tensor or a plain value,
so a crafted file cannot run code. Files are written to a temporary name in the same folder,
flushed, fsynced and renamed over the target (then the folder is fsynced), so a crash or ``kill -9``
mid-save leaves the previous file whole.

Where a run keeps its checkpoints and how ``RUN`` or ``RUN:best`` become a file is ``find.py``;
the callback that saves them during training is ``callback.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab import __version__
from mnistlab.atomic import atomic_path
from mnistlab.config import Config, from_dict
from mnistlab.errors import CheckpointError, ConfigError

MAGIC = b"MNISTLAB-CHECKPOINT\n"
FORMAT_VERSION = 1
"""Bump when the payload layout changes in a way older code cannot read."""
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.pt"
STEP_PATTERN = re.compile(r"^step-(\d+)\.pt$")
_MAX_HEADER = 64 * 1024


def step_name(step: int) -> str:
    return f"step-{step:06d}.pt"


# -- writing ---------------------------------------------------------------------------------------
def _write_all(handle: Any, data: bytes | memoryview) -> None:
    """Write in chunks (a separate function so tests can stop a save half-way)."""
    view = memoryview(data)
    for start in range(0, len(view), 1 << 20):
        handle.write(view[start : start + (1 << 20)])


def atomic_write(path: str | Path, parts: list[bytes]) -> Path:
    """Write ``parts`` to ``path`` so that readers see the old file or the whole new one, never a
    half: ``mnistlab.atomic``'s recipe (temp file beside it, fsync, rename, fsync the folder); the
    temp file is removed if anything goes wrong, including a second Ctrl-C."""
    with (
        atomic_path(path, what="checkpoint", error=CheckpointError) as tmp,
        open(tmp, "wb") as handle,
    ):
        for part in parts:
            _write_all(handle, part)
    return Path(path)


def _digest(header: dict[str, Any], payload: bytes | memoryview) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    h.update(payload)
    return h.hexdigest()


def pack(payload: bytes, **info: Any) -> list[bytes]:
    """The file's parts for ``payload`` (``torch.save`` bytes) with header fields ``info``."""
    header: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "mnistlab_version": __version__,
        "torch_version": torch.__version__,
        "created": time.time(),
        **info,
        "payload_bytes": len(payload),
    }
    header["sha256"] = _digest(header, payload)
    return [MAGIC, json.dumps(header, sort_keys=True).encode() + b"\n", payload]


def serialize(state: dict[str, Any], **info: Any) -> list[bytes]:
    """``state`` (a ``Run.state_dict()``) as checkpoint file parts."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    metrics = state.get("metrics") or {}
    config = state.get("config") or {}
    info = {
        "step": int(state["step"]),
        "preset": config.get("preset"),
        "config": config,
        "validation_accuracy": metrics.get("validation_accuracy"),
        **info,
    }
    return pack(buffer.getvalue(), **info)


def save_checkpoint(path: str | Path, state: dict[str, Any], **info: Any) -> Path:
    return atomic_write(path, serialize(state, **info))


# -- reading ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    path: Path
    header: dict[str, Any]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def config(self) -> Config:
        try:
            return from_dict(self.state["config"], where=f"the config saved in {self.path}")
        except ConfigError as exc:
            raise CheckpointError(
                f"{exc}; this checkpoint's settings do not fit this mnistlab ({__version__})"
            ) from None

    @property
    def run_dir(self) -> Path | None:
        """The run folder this file belongs to (``RUN/checkpoints/x.pt``), if it is in one."""
        return self.path.parent.parent if self.path.parent.name == CHECKPOINT_DIR else None


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """The JSON header and the offset where the payload starts. Checks magic and format version."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(MAGIC) + _MAX_HEADER)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if not head.startswith(MAGIC):
        what = "empty" if not head else "not an mnistlab checkpoint (no mnistlab header)"
        raise CheckpointError(
            f"{path} is {what}; give a file written by `mnistlab train` "
            "(RUN/checkpoints/step-*.pt) or a run folder"
        )
    end = head.find(b"\n", len(MAGIC))
    try:
        if end < 0:
            raise ValueError("no end of header")
        header = json.loads(head[len(MAGIC) : end])
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        version = int(header["format_version"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(
            f"checkpoint {path} is damaged (its header cannot be read); use an "
            "earlier checkpoint of the run"
        ) from None
    if version != FORMAT_VERSION:
        by = f"mnistlab {header.get('mnistlab_version', '?')}"
        fix = (
            "upgrade mnistlab (pip install -U mnistlab) to read it"
            if version > FORMAT_VERSION
            else "load it with that older mnistlab and export it, or train again"
        )
        raise CheckpointError(
            f"checkpoint {path} was written by {by} in checkpoint format {version}; this mnistlab "
            f"({__version__}) reads format {FORMAT_VERSION} only: {fix}"
        )
    return header, end + 1


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read and verify a checkpoint file. Never unpickles anything but tensors and plain values."""
    path = Path(path)
    header, offset = read_header(path)
    with open(path, "rb") as handle:
        handle.seek(offset)
        payload = handle.read()
    expected = header.get("payload_bytes")
    if not isinstance(expected, int) or len(payload) != expected:
        raise CheckpointError(
            f"checkpoint {path} is truncated or damaged: {len(payload):,} bytes of data where "
            f"{expected} were written; use an earlier checkpoint of the run"
        )
    claimed = header.pop("sha256", None)
    if claimed != _digest(header, payload):
        raise CheckpointError(
            f"checkpoint {path} is damaged: its sha256 checksum does not match (a flipped bit or "
            "a partial copy); use an earlier checkpoint of the run"
        )
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # the unpickler refuses anything that is not weights
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
        why = next(
            (line for line in lines if "Unsupported" in line or "GLOBAL" in line),
            type(exc).__name__,
        )
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain values, "
            f"which could run code ({why.split(' Please')[0][:160]}); it is not a checkpoint "
            "mnistlab wrote"
        ) from None
    if not isinstance(state, dict) or not {"step", "model", "config"} <= state.keys():
        raise CheckpointError(f"{path} does not hold a training state (step, model, config)")
    return Checkpoint(path=path, header=header, state=state)
