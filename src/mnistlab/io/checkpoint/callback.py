"""Saving checkpoints during training: the callback that writes what the loop consolidated."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

from mnistlab.config.schema import CheckpointConfig
from mnistlab.io.callbacks import Callback, RunView, Wants
from mnistlab.io.checkpoint.fileformat import (
    BEST_NAME,
    CHECKPOINT_DIR,
    atomic_write,
    serialize,
    step_name,
)
from mnistlab.io.checkpoint.find import step_checkpoints


def _all_finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


class CheckpointCallback(Callback):
    """Save every ``every`` steps and at the end (keeping the last ``keep``), ``best.pt`` at each
    new best validation accuracy, and the current step on Ctrl-C / SIGTERM.

    The loop consolidates the state (collective under the parallel modes) at the boundaries this
    callback asks for in ``wants`` and hands it over on the main rank; this callback only writes.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        every: int | None = None,
        keep: int | None = None,
        stream: Any = None,
    ):
        """``every`` and ``keep`` default to the run's ``checkpoint.every`` and
        ``checkpoint.keep``, read from the config the run trains with (a worker's share of it
        under ``--parallel async``)."""
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / CHECKPOINT_DIR
        self.every = every
        self.keep = keep
        self.stream = stream
        self.last_saved: Path | None = None
        """The newest step checkpoint this callback wrote (``None`` when the last save was
        refused): where the state of a stopped run went."""

    def _say(self, run: RunView, text: str) -> None:
        if run.is_main:
            print(f"mnistlab: {text}", file=self.stream or sys.stderr, flush=True)

    def wants(self, run: RunView) -> Wants:
        if self.every is None:
            self.every = run.config.checkpoint.every
        if self.keep is None:
            self.keep = run.config.checkpoint.keep
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
        keep = self.keep if self.keep is not None else CheckpointConfig.keep
        for _, old in step_checkpoints(self.folder)[:-keep]:
            with contextlib.suppress(OSError):
                old.unlink()
