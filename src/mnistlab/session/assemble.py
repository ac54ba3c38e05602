"""Assembling one run: the folder, the data, the callbacks, the training, and what to say if it stops.

The one place a training run is put together, for every front door: ``mnistlab train`` (alone
or as one worker of a group), each seed of ``--seeds``, and ``mnistlab.train``. Each door turns
its own inputs (flags, keywords) into a ``Config`` and a ``RunRequest``; ``run_training`` does the
rest the same way for all of them:

1. claim the run folder (``session.folder.claim``: refused if another run or a live training
   holds it; a failed start leaves no trace) — on the main process only;
2. load the data, with the sample fall-back (``session.data.load_data``), unless the caller
   already holds it (``--seeds`` loads it once for every seed);
3. save the resolved settings as ``RUN/config.toml``;
4. the callbacks: the console, and with a run folder the checkpoints and tracking
   (TensorBoard, ``metrics.jsonl``), then the caller's own;
5. the one training loop (``train.train``; a parallel strategy's worker share of the settings is
   applied inside it, by ``build_run``);
6. on Ctrl-C or SIGTERM, the stop message says where the state went and how to go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistlab.config import Config, to_toml
from mnistlab.errors import ConfigError
from mnistlab.session import folder
from mnistlab.session.data import load_data
from mnistlab.session.resume import Resumed

if TYPE_CHECKING:
    from mnistlab.data import Splits
    from mnistlab.io.callbacks import Callback
    from mnistlab.parallel import Strategy
    from mnistlab.training import TrainResult


def write_settings(run_dir: Path, config: Config) -> None:
    """The resolved settings as ``RUN/config.toml`` (the folder is made if needed)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / folder.CONFIG_NAME).write_text(to_toml(config), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the run folder {run_dir}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class RunRequest:
    """What a front door asks for. ``run_dir=None`` writes nothing (the Python API's default)."""

    config: Config
    run_dir: Path | None = None
    resumed: Resumed | None = None
    """From ``session.resume.resume_state``: the state to go on from and its folder."""
    overwrite: bool = False
    """Replace another run in ``run_dir`` (its checkpoints, metrics, events, config.toml)."""
    quiet: bool = False
    """No progress bar or per-evaluation lines."""
    tensorboard: bool | None = None
    """TensorBoard events: ``None`` follows ``tracking.tensorboard``."""
    callbacks: Sequence[Callback] = ()
    """The caller's own, after the standard ones."""
    warn: Callable[[str], None] | None = None
    """How to say the sample fall-back (default: a highlighted line on stderr)."""
    resume_command: str = "mnistlab train --resume {run_dir}"
    """How to go on after a stop, as the stop message says it."""


@dataclass
class Finished:
    """A run that trained to its end: the settings it ran with, its data and its figures."""

    config: Config
    data: Splits
    result: TrainResult
    run_dir: Path | None
    callbacks: list[Callback] = field(default_factory=list)


def standard_callbacks(
    run_dir: Path | None, *, quiet: bool, tensorboard: bool | None
) -> tuple[list[Callback], Any]:
    """The console, and with a run folder its checkpoints and tracking; and the checkpoint
    callback itself (``None`` without a folder), which knows the last file it saved."""
    from mnistlab.io.checkpoint import CheckpointCallback
    from mnistlab.io.console import ConsoleCallback
    from mnistlab.io.tracking import TrackingCallback

    callbacks: list[Callback] = [ConsoleCallback(quiet=quiet)]
    if run_dir is None:
        return callbacks, None
    checkpoints = CheckpointCallback(run_dir)  # every / keep: the run's checkpoint settings
    callbacks += [checkpoints, TrackingCallback(run_dir, tensorboard=tensorboard)]
    return callbacks, checkpoints


def run_training(
    request: RunRequest, *, data: Splits | None = None, strategy: Strategy | None = None
) -> Finished:
    """Claim, load, save the settings, train (``strategy``: ``None`` for one process)."""
    from mnistlab.training import TrainingInterrupted, train

    config, run_dir, resumed = request.config, request.run_dir, request.resumed
    is_main = strategy is None or strategy.is_main
    claim: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if run_dir is not None and is_main:
        claim = folder.claim(
            run_dir,
            resuming=resumed is not None and resumed.asked,
            overwrite=request.overwrite,
            resumed_from=resumed.run_dir if resumed is not None else None,
        )
    with claim:
        if data is None:
            config, data = load_data(config, quiet=request.quiet or not is_main, warn=request.warn)
        if run_dir is not None and is_main:
            write_settings(run_dir, config)
        callbacks, checkpoints = standard_callbacks(
            run_dir, quiet=request.quiet, tensorboard=request.tensorboard
        )
        callbacks += list(request.callbacks)
        try:
            result = train(
                config,
                data,
                strategy=strategy,
                callbacks=callbacks,
                resume_state=resumed.state if resumed is not None else None,
            )
        except TrainingInterrupted as stop:
            saved = checkpoints.last_saved if checkpoints is not None else None
            if saved is None or run_dir is None:
                raise
            how = request.resume_command.format(run_dir=run_dir)
            raise stop.with_hint(f"checkpoint {saved}; continue with: {how}") from None
    return Finished(config, data, result, run_dir, callbacks)
