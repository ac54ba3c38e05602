"""``metrics.jsonl``: one JSON object per logged step, for scripts that need no TensorBoard.

Line-buffered and append-only while a run trains, so a crash loses at most the line being
written; ``sync`` makes every line written so far durable, and the tracking callback calls it
just before each checkpoint is written, so a run killed right after a checkpoint still has that
step's line. A resumed run goes on in the same file from the step it resumed at: the records
after that step (the stretch the checkpoint does not hold, which the resumed run trains again)
are dropped first, so the file stays in step order with one line per step.
``io.plots.read_metrics`` reads it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from mnistlab.atomic import atomic_write
from mnistlab.errors import TrackingError


class MetricsFile:
    """Append-only JSON Lines, one object per line, flushed at each newline (line buffering).

    ``resume_at``: the step a resumed run goes on from; the records after it are dropped (and a
    line torn by a crash with them) before anything is appended."""

    def __init__(self, path: Path, *, resume_at: int | None = None):
        self.path = path
        self.kept: list[dict[str, Any]] = []
        """The records the file held up to ``resume_at`` (empty for a new run)."""
        try:
            if resume_at is not None and path.exists():
                self.kept = _truncate_after(path, resume_at)
            torn = _ends_torn(path)
            self._file: IO[str] | None = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            if torn:  # a crash cut the last line: end it, so the resumed run's lines stay whole
                self._file.write("\n")
        except OSError as exc:
            raise TrackingError(f"cannot write {path}: {exc.strerror or exc}") from None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=False, default=_plain) + "\n")

    def sync(self) -> None:
        """Every line written so far on disk (flush and fsync)."""
        if self._file is not None:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                raise TrackingError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _truncate_after(path: Path, step: int) -> list[dict[str, Any]]:
    """Rewrite ``path`` (atomically) with its records up to ``step``: the lines of steps the
    resumed run trains again go, with the end-of-run summary of a run that is now going on and
    any torn or damaged line. Returns the records kept."""
    kept: list[dict[str, Any]] = []
    lines: list[bytes] = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        if record["step"] > step or (record["step"] == step and "test_accuracy" in record):
            continue
        kept.append(record)
        lines.append(line.rstrip() + b"\n")
    atomic_write(path, b"".join(lines), what="metrics file", error=TrackingError)
    return kept


def _ends_torn(path: Path) -> bool:
    """Does the file end in the middle of a line (a crash while writing it)?"""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def _plain(value: Any) -> Any:
    if isinstance(value, (torch.Tensor, np.generic)):
        return value.item()
    return str(value)


def finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: such values become ``null``."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }
