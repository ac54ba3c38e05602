"""One atomic file writer for everything mnistlab writes: checkpoints, IDX files, downloads,
exports, plots.

A reader sees the old file or the whole new one, never a half: the bytes go to a temp file in the
target's folder (same file system, so the rename is atomic), are flushed and fsynced, and the temp
file is renamed over the target; then the folder is fsynced so the rename survives a crash. Any
failure removes the temp file and becomes one error of the caller's family that names the file by
what it is ("export file", "plot") and says what to do. Standard library only: every layer may use
it, as ``errors``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from mnistlab.errors import MnistlabError

__all__ = ["atomic_path", "atomic_write", "check_writable", "ensure_parent"]


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def ensure_parent(path: Path, what: str, error: type[MnistlabError]) -> None:
    """Create ``path``'s folder (and its parents), or say in one line why it cannot be."""
    parent = path.parent
    if parent.is_dir():
        return
    blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise error(
            f"cannot write {what} {path}: {blocker} is a file, not a folder; choose another path"
        )
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(
            f"cannot write {what} {path}: its folder {parent} cannot be created "
            f"({_reason(exc)}); choose a path in a folder you can write"
        ) from None


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _failure(exc: OSError, path: Path, what: str, error: type[MnistlabError]) -> MnistlabError:
    if exc.errno == errno.EISDIR or path.is_dir():
        return error(f"cannot write {what} {path}: it is a folder; choose a file name")
    return error(
        f"cannot write {what} {path}: {_reason(exc)}; check the folder is writable and has space"
    )


def check_writable(path: str | os.PathLike[str], *, what: str, error: type[MnistlabError]) -> Path:
    """Fail now, in one line, if ``path`` could not be written (its folder cannot be made, is
    read-only, or ``path`` is a folder), before slow work whose result would be lost."""
    path = Path(path)
    ensure_parent(path, what, error)
    if path.is_dir():
        raise error(f"cannot write {what} {path}: it is a folder; choose a file name")
    probe = _temp_name(path)
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        raise _failure(exc, path, what, error) from None
    return path


def _temp_name(path: Path) -> Path:
    """Unique per call, so two writers (threads, processes) of one target never share a file."""
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, what: str, error: type[MnistlabError]
) -> Iterator[Path]:
    """Yield a temp path beside ``path`` for a writer that wants a file name (ONNX, matplotlib);
    when the block ends without error it is fsynced and renamed to ``path``."""
    path = Path(path)
    ensure_parent(path, what, error)
    if path.is_dir():
        raise error(f"cannot write {what} {path}: it is a folder; choose a file name")
    tmp = _temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise _failure(exc, path, what, error) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | Iterable[bytes],
    *,
    what: str,
    error: type[MnistlabError],
) -> Path:
    """Write ``data`` (bytes, or parts written in order) to ``path`` atomically."""
    path = Path(path)
    parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    with atomic_path(path, what=what, error=error) as tmp, open(tmp, "wb") as handle:
        for part in parts:
            handle.write(part)
    return path
