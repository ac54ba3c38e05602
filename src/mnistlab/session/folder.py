"""Run folders: one run per folder, one training in it at a time, whichever door opened it.

Every way a run folder is opened — ``mnistlab train`` (``--run-dir``, the default folder,
``--resume``), ``--seeds`` (one folder per seed) and ``mnistlab.train(run_dir=...)`` — goes
through ``claim``, so the rules hold for all of them alike:

- a folder that already holds another run (its settings, checkpoints, metrics or TensorBoard
  events) is refused, so a new run never mixes with an old one, unless the run is replaced
  (``overwrite``, which clears the old run's files first);
- a resumed run goes on in its own folder, or in a folder that holds no run yet (a copy that
  continues elsewhere); never in a folder that holds a different run;
- while a run trains, its main process holds an ``fcntl.flock`` on ``RUN/.lock``; a second
  training into the folder is refused, naming the holder. The kernel drops the lock when the
  holder ends, however it ends (``kill -9`` included), so a lock file left by a dead process never
  blocks;
- a start that fails before anything of the run was written leaves no trace: the lock file it
  made goes, and so does the folder if the claim created it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from mnistlab.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the contents check still applies
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
CONFIG_NAME = "config.toml"
METRICS_NAME = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
EVENTS = "events.out.tfevents.*"


def new_run_dir(preset: str, root: Path = Path("runs")) -> Path:
    """``runs/<date-time>-<preset>``, with ``-2``, ``-3`` ... when a run started that second."""
    base = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{preset}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def run_contents(path: Path) -> list[str]:
    """What in ``path`` belongs to a run (empty for a new or unrelated folder)."""
    if not path.is_dir():
        return []
    found = [name for name in (CONFIG_NAME, METRICS_NAME) if (path / name).is_file()]
    checkpoints = path / CHECKPOINTS
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        found.append(f"{CHECKPOINTS}/")
    if any(path.glob(f"**/{EVENTS}")):
        found.append("TensorBoard events")
    return found


def clear_run(path: Path) -> None:
    """Remove an earlier run's settings, checkpoints, metrics and events (nothing else)."""
    try:
        if (path / CHECKPOINTS).is_dir():
            shutil.rmtree(path / CHECKPOINTS)
        for name in (CONFIG_NAME, METRICS_NAME):
            (path / name).unlink(missing_ok=True)
        for events in path.glob(f"**/{EVENTS}"):
            events.unlink()
    except OSError as exc:
        raise ConfigError(
            f"--overwrite cannot clear the earlier run in {path}: {exc.strerror or exc}"
        ) from None


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def check_free(
    path: Path,
    *,
    resuming: bool = False,
    overwrite: bool = False,
    resumed_from: Path | None = None,
) -> None:
    """Refuse ``path`` when a live training holds it, or when it holds another run that this
    one would neither resume nor overwrite (``claim``'s rules). Takes no lock, changes nothing."""
    with _locked(path, create=False):
        pass
    _refuse_other_run(path, resuming=resuming, overwrite=overwrite, resumed_from=resumed_from)


def _refuse_other_run(
    path: Path, *, resuming: bool, overwrite: bool, resumed_from: Path | None
) -> None:
    found = run_contents(path)
    if not found:
        return
    if resuming:
        if resumed_from is None or _same_folder(path, resumed_from):
            return
        raise ConfigError(
            f"run folder {path} holds a different run ({', '.join(found)}) from the one being "
            f"resumed, whose checkpoint belongs to {resumed_from}: resume in {resumed_from} "
            "itself, or name an empty run folder to continue a copy there"
        )
    if overwrite:
        return
    raise ConfigError(
        f"run folder {path} already holds another run ({', '.join(found)}): continue it "
        f"with --resume {path}, replace it with --overwrite, or choose another --run-dir"
    )


@contextlib.contextmanager
def claim(
    path: Path,
    *,
    resuming: bool = False,
    overwrite: bool = False,
    resumed_from: Path | None = None,
) -> Iterator[None]:
    """Hold ``path`` for this run until the block ends: refuse it if taken (``check_free``),
    clear an earlier run when ``overwrite`` asks for it. ``resumed_from`` is the folder the
    resumed checkpoint came from (``None``: it had none, or this is a new run).

    If the block fails before the run wrote anything, the folder is left as it was found."""
    existed = path.is_dir()
    had_lock = (path / LOCK_NAME).exists()
    held_a_run = bool(run_contents(path))
    with _locked(path, create=True):
        try:
            if existed:
                _refuse_other_run(
                    path, resuming=resuming, overwrite=overwrite, resumed_from=resumed_from
                )
                if overwrite and not resuming:
                    clear_run(path)
                    held_a_run = False
            yield
        except BaseException:
            if not held_a_run and run_contents(path) in ([], [CONFIG_NAME]):
                _leave_no_trace(path, remove_lock=not had_lock, remove_folder=not existed)
            raise


def _leave_no_trace(path: Path, *, remove_lock: bool, remove_folder: bool) -> None:
    """After a start that failed before the run recorded anything (no checkpoint, metric or
    event; at most the settings it had just saved): that ``config.toml``, the lock file this
    claim made, and the folder if it made it and nothing else is in it (never anything a person
    put there)."""
    with contextlib.suppress(OSError):
        (path / CONFIG_NAME).unlink(missing_ok=True)
        if remove_lock:
            (path / LOCK_NAME).unlink()
        if remove_folder:
            path.rmdir()  # only when empty


@contextlib.contextmanager
def _locked(path: Path, *, create: bool) -> Iterator[None]:
    """An exclusive ``flock`` on ``path/.lock`` for the block; with ``create`` off, a probe that
    creates nothing (a folder that does not exist is not locked)."""
    lock = path / LOCK_NAME
    if fcntl is None or not (create or lock.is_file()):
        yield
        return
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot use the run folder {path}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"run folder {path} is in use by a training that is still running (pid "
                f"{holder}): wait for it to end or stop it, or choose another --run-dir"
            ) from None
        if create:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # drops the lock
