"""``metrics.jsonl``: one JSON object per logged step, for scripts that need no TensorBoard.

Line-buffered and append-only, so a crash loses at most the line being written, and a resumed run
goes on in the same file (a torn last line is ended first). ``io.plots.read_metrics`` reads it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from mnistlab.errors import TrackingError


class MetricsFile:
    """Append-only JSON Lines, one object per line, flushed at each newline (line buffering)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            torn = _ends_torn(path)
            self._file: IO[str] | None = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            if torn:  # a crash cut the last line: end it, so the resumed run's lines stay whole
                self._file.write("\n")
        except OSError as exc:
            raise TrackingError(f"cannot write {path}: {exc.strerror or exc}") from None

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=False, default=_plain) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
