"""The checkpoint file format: one self-checking file per saved step, written atomically, read
without running code, and checked for what it means before anything is built from it.

Since format 2 a checkpoint is a safetensors file (``container.py``): the tensors of
``Run.state_dict()`` plus JSON for everything else (the step, the settings, the counters), a
container that cannot hold code and that any safetensors reader opens without mnistlab. Format 1
(``legacy.py``: a magic line, a JSON header, a ``torch.save`` payload read with
``weights_only=True``) is still read. Either way a sha256 over everything is checked first, so a
truncated or bit-flipped file is reported as such; then ``trust.check_state`` checks the state
itself, since a checksum proves a file whole, not honest. Files are written to a temporary name
in the same folder, flushed, fsynced and renamed over the target (then the folder is fsynced), so
a crash or ``kill -9`` mid-save leaves the previous file whole.

Where a run keeps its checkpoints and how ``RUN`` or ``RUN:best`` become a file is ``find.py``;
the callback that saves them during training is ``callback.py``; why this format,
docs/model-saving.md.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab import __version__
from mnistlab.atomic import atomic_path
from mnistlab.config import Config
from mnistlab.config.schema import INPUT_SHAPE
from mnistlab.errors import CheckpointError
from mnistlab.io.checkpoint import container, legacy
from mnistlab.io.checkpoint.trust import check_state

MAGIC = legacy.MAGIC
FORMAT_VERSION = container.VERSION
"""The format this mnistlab writes. Bump when the layout changes in a way older code cannot read."""
READABLE = (legacy.VERSION, container.VERSION)
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.pt"
"""Checkpoints keep the ``.pt`` names of format 1 (run folders, scripts and ``RUN:best`` find
them by these names); the content says which format a file is in."""
STEP_PATTERN = re.compile(r"^step-(\d+)\.pt$")


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


def _info(state: dict[str, Any], **info: Any) -> dict[str, Any]:
    """The header fields of a file holding ``state``: versions, step, preset, config, accuracy."""
    metrics = state.get("metrics") or {}
    config = state.get("config") or {}
    return {
        "mnistlab_version": __version__,
        "torch_version": torch.__version__,
        "created": time.time(),
        "step": int(state["step"]),
        "preset": config.get("preset"),
        "config": config,
        "validation_accuracy": metrics.get("validation_accuracy"),
        **info,
    }


def serialize(state: dict[str, Any], **info: Any) -> list[bytes]:
    """``state`` (a ``Run.state_dict()``) as checkpoint file parts, in ``FORMAT_VERSION``."""
    return [container.pack(state, _info(state, **info))]


def serialize_v1(state: dict[str, Any], **info: Any) -> list[bytes]:
    """``state`` as the parts of a format-1 file (for tests and the format benchmark)."""
    return legacy.serialize(state, _info(state, **info))


def save_checkpoint(path: str | Path, state: dict[str, Any], **info: Any) -> Path:
    return atomic_write(path, serialize(state, **info))


# -- reading ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkpoint:
    path: Path
    header: dict[str, Any]
    state: dict[str, Any]
    config: Config
    """The saved settings, checked as a new run's are (``trust.check_state``)."""

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def run_dir(self) -> Path | None:
        """The run folder this file belongs to (``RUN/checkpoints/x.pt``), if it is in one."""
        return self.path.parent.parent if self.path.parent.name == CHECKPOINT_DIR else None


def _open(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of ``path`` (all of it for ``-1``), or one ``CheckpointError``."""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None


def _check_version(header: dict[str, Any], path: Path, layout: int) -> None:
    """The header's format is the one its file's layout is (``layout``), or says which newer
    mnistlab wrote it."""
    version = header["format_version"]
    if version == layout and type(version) is int:
        return
    if type(version) is not int or version <= FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} is damaged (its header names format {version!r:.20} for a "
            f"format-{layout} file); use an earlier checkpoint of the run"
        )
    by = f"mnistlab {header.get('mnistlab_version', '?')!s:.20}"
    fix = (
        "upgrade mnistlab (pip install -U mnistlab) to read it"
        if version > FORMAT_VERSION
        else "load it with that older mnistlab and export it, or train again"
    )
    raise CheckpointError(
        f"checkpoint {path} was written by {by} in checkpoint format {show_version(version)}; "
        f"this mnistlab ({__version__}) reads formats {' and '.join(map(str, READABLE))}: {fix}"
    )


def show_version(version: int) -> str:
    return str(version) if abs(version) < 10**6 else "(a number far out of range)"


def _header(head: bytes, path: Path) -> tuple[dict[str, Any], int]:
    if head.startswith(MAGIC):
        header, offset = legacy.parse_header(head, path)
        layout = legacy.VERSION
    elif container.looks_like(head):
        header, offset = container.parse_header(head, path)
        layout = container.VERSION
    else:
        what = "empty" if not head else "not an mnistlab checkpoint (no mnistlab header)"
        raise CheckpointError(
            f"{path} is {what}; give a file written by `mnistlab train` "
            "(RUN/checkpoints/step-*.pt) or a run folder"
        )
    _check_version(header, path, layout)
    return header, offset


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """The JSON header (versions, step, config, accuracy) and the offset where the data starts,
    without reading the data. Checks the kind of file and its format version only: what the
    header says is checked against the data by ``load_checkpoint``."""
    path = Path(path)
    head = _open(path, len(MAGIC) + legacy.MAX_HEADER)
    if container.looks_like(head) and not head.startswith(MAGIC):
        size = container.header_size(head)
        if len(head) < size <= container.MAX_HEADER + 8:
            head = _open(path, size)
    return _header(head, path)


def load_checkpoint(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
) -> Checkpoint:
    """Read, verify and check a checkpoint file: its checksum, then every value in it against
    what mnistlab writes and the model its settings build for images of ``input_shape`` (every
    registered dataset's is the default). Runs no code from the file, allocates nothing its
    settings and tensors do not account for, and raises one ``CheckpointError`` for anything
    wrong."""
    path = Path(path)
    data = _open(path, -1)
    header, offset = _header(data, path)
    if data.startswith(MAGIC):
        state = legacy.read_state(path, header, memoryview(data)[offset:])
    else:
        state = container.read_state(path, data)
    del data
    config = check_state(state, header, path, input_shape)
    if torch.device(map_location) != torch.device("cpu"):
        state = _to(state, torch.device(map_location))
    return Checkpoint(path=path, header=header, state=state, config=config)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    return value
