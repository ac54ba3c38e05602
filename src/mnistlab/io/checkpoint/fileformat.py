"""Checkpoints: one self-checking file per saved step, written atomically, read without pickles.

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

A run folder keeps ``checkpoints/step-000500.pt`` ... (the last ``keep``) and ``checkpoints/best.pt``
(the state with the best validation accuracy). ``resolve_checkpoint`` turns ``RUN``, ``RUN:best``
or a file into a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab import __version__
from mnistlab.atomic import atomic_path
from mnistlab.config import Config, from_dict
from mnistlab.config.schema import INPUT_SHAPE
from mnistlab.errors import CheckpointError, ConfigError
from mnistlab.io.callbacks import Callback, RunView, Wants
from mnistlab.models import StagedModel, build_model

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


# -- finding ---------------------------------------------------------------------------------------
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
    """A checkpoint file for ``FILE``, ``RUN`` (its latest) or ``RUN:best``."""
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


def load_model(
    spec: str | Path, *, use_ema: bool = True, input_shape: tuple[int, int, int] = INPUT_SHAPE
) -> tuple[StagedModel, Checkpoint]:
    """The model saved in a checkpoint, rebuilt from its config for images of ``input_shape`` (every
    registered dataset's is the default), in eval mode on the CPU. EMA shadows by default (what the
    classic programs evaluate); raw parameters if ``use_ema`` is off or the run kept no average."""
    ckpt = load_checkpoint(resolve_checkpoint(spec))
    state = ckpt.state
    ema = state.get("ema") or {}
    shadows = ema.get("shadows")
    tensors: dict[str, torch.Tensor] = shadows if use_ema and shadows else state["model"]
    config = ckpt.config
    logits = tensors.get("logits.weight")
    if logits is None:
        raise CheckpointError(f"{ckpt.path} holds no 'logits.weight'; not an mnistlab model")
    model = build_model(
        config.model,
        num_classes=int(logits.shape[0]),
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


# -- during training -------------------------------------------------------------------------------
def _all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


class CheckpointCallback(Callback):
    """Save every ``every`` steps and at the end (keeping the last ``keep``), ``best.pt`` at each
    new best validation accuracy, and the current step on Ctrl-C / SIGTERM.

    The loop consolidates the state (collective under the parallel modes) at the boundaries this
    callback asks for in ``wants`` and hands it over on the main rank; this callback only writes.
    """

    def __init__(
        self, run_dir: str | Path, *, every: int = 1000, keep: int = 3, stream: Any = None
    ):
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / CHECKPOINT_DIR
        self.every = every
        self.keep = keep
        self.stream = stream
        self.last_saved: Path | None = None

    def _say(self, run: RunView, text: str) -> None:
        if run.is_main:
            print(f"mnistlab: {text}", file=self.stream or sys.stderr, flush=True)

    def wants(self, run: RunView) -> Wants:
        return Wants(checkpoints=True, checkpoint_every=self.every)

    def on_start(self, run: RunView) -> None:
        if run.is_main and self.folder.is_dir():  # temp files of a save that was killed
            for stale in self.folder.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def on_checkpoint(
        self, run: RunView, state: dict[str, Any], *, periodic: bool, best: bool
    ) -> None:
        self.save(run, state, periodic=periodic, best=best)

    def on_interrupt(self, run: RunView) -> None:
        if self.last_saved is not None and run.is_main:
            run.resume_hint = (
                f"checkpoint {self.last_saved}; continue with: mnistlab train --resume "
                f"{self.run_dir}"
            )

    def on_failure(self, run: RunView, error: BaseException) -> None:
        """Nothing to write: the checkpoints on disk are from before the failure and stay."""

    def save(
        self, run: RunView, state: dict[str, Any], *, periodic: bool, best: bool = False
    ) -> Path | None:
        if not (
            _all_finite(state["model"])
            and (state.get("ema") is None or _all_finite(state["ema"]["shadows"]))
        ):
            self._say(
                run,
                f"not saving step {run.step}: the weights are NaN or infinite; the "
                "earlier checkpoints are kept",
            )
            if periodic:
                self.last_saved = None
            return None
        parts = serialize(
            state, best_validation_accuracy=run.best_validation_accuracy, best_step=run.best_step
        )
        path = None
        if periodic:
            path = atomic_write(self.folder / step_name(run.step), parts)
            self.last_saved = path
            self._prune()
        if best:
            best_path = atomic_write(self.folder / BEST_NAME, parts)
            path = path or best_path
        return path

    def _prune(self) -> None:
        """Keep the ``keep`` newest step files; ``best.pt`` is its own file and always stays."""
        for _, old in step_checkpoints(self.folder)[: -self.keep]:
            with contextlib.suppress(OSError):
                old.unlink()
