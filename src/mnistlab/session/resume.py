"""Resume: find the checkpoint to continue and the settings to continue with.

``mnistlab train --resume`` and ``mnistlab.train(resume=...)`` both come here. The checkpoint's
own settings win, so ``--resume DIR`` needs no other flag (a parallel run's mode and worker count
included: ``mnistlab train --resume RUN`` starts the workers again); what the caller sets itself
applies on top only where it cannot change what is computed (``RESUME_SAFE``). A damaged newest
checkpoint of a run folder is skipped for the previous good one, saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistlab.config import Config, set_value, validate
from mnistlab.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from mnistlab.io.checkpoint import Checkpoint

# Settings a resumed run may change without changing what it computes (docs/model-saving.md).
RESUME_SAFE = (
    "train.steps",
    "train.eval_every",
    "train.log_every",
    "train.device",
    "train.threads",
    "data.data_dir",
    "data.download",
    "checkpoint.",
    "tracking.",
    "parallel.",
)


def explicit_settings(keys: list[str], config: Config) -> dict[str, Any]:
    """``{key: value}`` for the settings a caller set itself (``keys``), as resolved in ``config``."""
    from mnistlab.config import flat_dict

    flat = flat_dict(config)
    return {key: flat[key] for key in keys if key in flat}


@dataclass(frozen=True)
class Resumed:
    """What ``resume_state`` found: the settings to run with, the state to continue from (``None``
    for a new run), the run folder it came from, and lines to tell the person (by the caller, on
    the main process only)."""

    config: Config
    state: dict[str, Any] | None = None
    run_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    asked: bool = False
    """A resume was asked for, even if ``auto`` found nothing to go on from: leave to use a
    folder that holds the run's earlier files (a run stopped before its first checkpoint and
    restarted, say by ``torchrun --max-restarts``)."""


def _is_safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in RESUME_SAFE)


def _same_run(saved: dict[str, Any], config: Config) -> bool:
    """Whether a saved config describes the same computation as ``config`` (for --resume auto)."""
    from mnistlab.config import flat_dict, from_dict

    try:
        ours, theirs = flat_dict(config), flat_dict(from_dict(saved))
    except ConfigError:
        return False
    return all(
        ours[k] == theirs.get(k)
        for k in ours
        if not _is_safe(k) and not (k == "data.dataset" and ours[k] == "auto")
    )


def _latest_good(run: Path, notes: list[str]) -> Checkpoint | None:
    """The newest step checkpoint of ``run`` that reads back whole; damaged newer ones are
    skipped, each said in ``notes``. ``None`` when the run has none."""
    from mnistlab.io.checkpoint import checkpoint_folder, load_checkpoint, step_checkpoints

    first_error: CheckpointError | None = None
    for _, path in reversed(step_checkpoints(checkpoint_folder(run))):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            first_error = first_error or exc
            notes.append(f"skipping {path}: {str(exc).split('; use an')[0]}")
            continue
        if first_error is not None:
            notes.append(f"going on from the previous good checkpoint, {path.name}")
        return ckpt
    if first_error is not None:
        raise CheckpointError(f"{first_error} (and no earlier checkpoint of {run} is whole)")
    return None


def _auto_checkpoint(config: Config, run_dir: Path | None, notes: list[str]) -> Checkpoint | None:
    """The latest good checkpoint of the newest run with the same settings (``run_dir`` if
    given)."""
    from mnistlab.io.checkpoint import checkpoint_folder, read_header, step_checkpoints

    if run_dir is not None:
        return _latest_good(run_dir, notes)
    candidates = []
    for run in Path("runs").iterdir() if Path("runs").is_dir() else []:
        found = step_checkpoints(checkpoint_folder(run))
        if found:
            candidates.append((max(p.stat().st_mtime for _, p in found), run, found))
    for _, run, found in sorted(candidates, key=lambda c: c[0], reverse=True):
        for _, path in reversed(found):  # the newest header that reads says whose run it is
            try:
                header, _ = read_header(path)
            except CheckpointError:
                continue
            if isinstance(header.get("config"), dict) and _same_run(header["config"], config):
                return _latest_good(run, notes)
            break
    return None


def resume_state(
    config: Config,
    spec: str | Path | None,
    *,
    explicit: dict[str, Any] | None = None,
    preset: str | None = None,
    run_dir: Path | None = None,
    config_file: bool = False,
) -> Resumed:
    """The state to resume from and the config it was saved with (or ``config`` for a new run).

    ``spec`` is a run folder, a checkpoint file, ``RUN:best`` or ``auto`` (the newest run with the
    same settings; in ``run_dir`` if given); ``None`` is a new run. The checkpoint's own settings
    win; ``explicit`` (the settings the caller set itself, ``{key: value}``) applies on top only
    where it cannot change the result (``RESUME_SAFE``, e.g. ``train.steps`` to extend a run, or
    another parallel mode); ``preset``, when the caller named one, must be the checkpoint's. The
    run goes on in the folder it came from (``Resumed.run_dir``)."""
    from mnistlab.config import flat_dict
    from mnistlab.io.checkpoint import load_checkpoint, resolve_checkpoint
    from mnistlab.io.checkpoint.trust import WEIGHTS_ONLY

    if not spec:
        return Resumed(config)
    spec = str(spec)
    notes: list[str] = []
    ckpt: Checkpoint | None
    if spec == "auto":
        ckpt = _auto_checkpoint(config, run_dir, notes)
        if ckpt is None:
            notes.append("--resume auto: no earlier run with these settings; starting a new one")
            return Resumed(config, notes=notes, asked=True)
    else:
        if config_file:
            raise ConfigError(
                "--config cannot be combined with --resume DIR|FILE: a resumed run "
                "keeps its checkpoint's settings (change safe ones with --set)"
            )
        folder = Path(spec)
        ckpt = _latest_good(folder, notes) if folder.is_dir() else None
        if ckpt is None:  # a file, RUN:best, or a folder with only best.pt
            ckpt = load_checkpoint(resolve_checkpoint(spec))
    path = ckpt.path
    resumed = ckpt.config
    if ckpt.state.get("kind") == WEIGHTS_ONLY:
        raise CheckpointError(
            f"{path} holds a model's weights only (no optimizer state, data order or random "
            "state): it evaluates, predicts, exports and serves, but cannot be resumed; resume "
            "from a checkpoint of its run"
        )
    if preset and preset != resumed.preset and spec != "auto":
        raise ConfigError(
            f"{path} is a {resumed.preset} run, not {preset}; drop --preset "
            "to resume it, or start a new run"
        )
    saved = flat_dict(resumed)
    for key, value in (explicit or {}).items():
        if value == saved.get(key) or (key == "data.dataset" and value == "auto"):
            continue
        if not _is_safe(key):
            raise ConfigError(
                f"cannot change {key} when resuming {path} (it was "
                f"{saved.get(key)!r}; the result would no longer be the same run): "
                "start a new run instead"
            )
        resumed = set_value(resumed, key, value)
    resumed = validate(resumed)
    note = (
        ""
        if ckpt.step < resumed.train.steps
        else (
            f" (it already reached train.steps={resumed.train.steps:,}; add --set train.steps=N to go on)"
        )
    )
    notes.append(f"resuming from {path} at step {ckpt.step:,}{note}")
    return Resumed(resumed, ckpt.state, ckpt.run_dir, notes, asked=True)
