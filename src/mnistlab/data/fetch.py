"""Download dataset files from their mirrors, verified, and atomically (urllib only).

Each file is streamed into a temp file beside its final name (``mnistlab.atomic``), hashed as it
arrives, and renamed to its final name only once its size, md5 and sha256 match the published
values. A 404, a timeout, a dropped connection, a short or corrupt body: the temp file is deleted
and the next mirror is tried. A half file never sits under a final name. Processes that download
into one folder at once (every rank of a group) take turns on a file lock there: one fetches, the
others then find the files verified and fetch nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from mnistlab.atomic import atomic_path
from mnistlab.data.registry import DatasetSpec, FileSpec
from mnistlab.errors import DataError

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as ``progress(filename, bytes_done, bytes_total)``; ``bytes_total`` may be None."""

TIMEOUT_S = 30.0
_CHUNK = 1 << 16
_USER_AGENT = "mnistlab/0.1 (dataset download; urllib)"
LOCK_NAME = ".download.lock"


class DownloadFailed(DataError):
    """Some file could not be fetched from any mirror; ``attempts`` says what each one answered."""

    def __init__(self, message: str, attempts: list[str]) -> None:
        super().__init__(message)
        self.attempts = attempts


class _BadFile(Exception):
    """One mirror's answer for one file was unusable (the message says why, briefly)."""


def _url(mirror: str, filename: str) -> str:
    return mirror.rstrip("/") + "/" + filename


def _already_good(fs: FileSpec, path: Path) -> bool:
    """A final-named file that matches the published size and md5 need not be fetched again."""
    if not path.is_file() or fs.md5 is None:
        return False
    if fs.size is not None and path.stat().st_size != fs.size:
        return False
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
    return md5.hexdigest() == fs.md5


def _stream(
    url: str, out: BinaryIO, fs: FileSpec, progress: ProgressCallback | None
) -> tuple[str, str]:
    """Copy the body of ``url`` into ``out``; return its md5 and sha256. Raises _BadFile."""
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    md5, sha = hashlib.md5(), hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            length_header = resp.headers.get("Content-Length")
            length = int(length_header) if length_header and length_header.isdigit() else None
            if length is not None and fs.size is not None and length != fs.size:
                raise _BadFile(f"server offers {length} bytes, expected {fs.size}")
            total = length if length is not None else fs.size
            if progress:
                progress(fs.filename, 0, total)
            while chunk := resp.read(_CHUNK):
                done += len(chunk)
                if fs.size is not None and done > fs.size:
                    raise _BadFile(f"server sent more than the expected {fs.size} bytes")
                out.write(chunk)
                md5.update(chunk)
                sha.update(chunk)
                if progress:
                    progress(fs.filename, done, total)
            if length is not None and done < length:
                raise _BadFile(f"connection dropped after {done} of {length} bytes")
    except urllib.error.HTTPError as e:
        raise _BadFile(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _BadFile(f"cannot connect ({e.reason})") from None
    except http.client.IncompleteRead as e:
        raise _BadFile(f"connection dropped after {done + len(e.partial)} bytes") from None
    except TimeoutError:
        raise _BadFile(f"timed out after {TIMEOUT_S:.0f} s ({done} bytes received)") from None
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        raise _BadFile(f"connection failed after {done} bytes ({type(e).__name__}: {e})") from None
    if fs.size is not None and done != fs.size:
        raise _BadFile(f"got {done} bytes, expected {fs.size}")
    return md5.hexdigest(), sha.hexdigest()


def fetch_file(
    fs: FileSpec, dest: Path, mirrors: Sequence[str], progress: ProgressCallback | None = None
) -> tuple[Path | None, list[str]]:
    """Try each mirror in turn; return (final path or None, what each failed mirror answered)."""
    final = dest / fs.filename
    failures: list[str] = []
    for mirror in mirrors:
        url = _url(mirror, fs.filename)
        try:
            with atomic_path(final, what="downloaded file", error=DataError) as tmp:
                with open(tmp, "wb") as out:
                    md5, sha = _stream(url, out, fs, progress)
                if fs.md5 is not None and md5 != fs.md5:
                    raise _BadFile(f"md5 {md5} is not the published {fs.md5} (corrupt file)")
                if fs.sha256 is not None and sha != fs.sha256:
                    raise _BadFile(f"sha256 {sha} is not the published {fs.sha256} (corrupt file)")
                os.chmod(tmp, 0o644)  # a dataset is for everyone to read
            return final, failures
        except _BadFile as e:
            failures.append(f"{url}: {e}")
        except DataError as e:  # the file cannot be written here: no mirror will help
            failures.append(str(e))
            break
    return None, failures


@contextlib.contextmanager
def download_lock(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``dest/.download.lock`` (fcntl): the ranks of a group, or two
    commands, that fetch into one folder take turns; whoever comes second finds the files
    fetched and verified, and downloads nothing."""
    try:
        handle = open(dest / LOCK_NAME, "a+b")  # noqa: SIM115 - held for the whole block
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    except OSError as e:
        why = f"cannot lock {dest / LOCK_NAME}: {e.strerror or e}"
        raise DownloadFailed(why, [why]) from None
    try:
        yield
    finally:
        handle.close()  # releases the lock


def fetch_dataset(
    spec: DatasetSpec,
    dest: Path,
    *,
    mirrors: Sequence[str],
    progress: ProgressCallback | None = None,
) -> dict[str, Path]:
    """Fetch every file of ``spec`` into ``dest`` (skipping ones already there and verified).

    One process at a time per folder (``download_lock``). Raises DownloadFailed listing, for each
    file that no mirror could deliver, every mirror's answer. Files that did arrive verified are
    kept: they are complete and correct.
    """
    if not mirrors:
        raise DownloadFailed(f"dataset {spec.name!r} has no download mirrors", ["no mirrors known"])
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadFailed(f"cannot create {dest}: {e}", [f"cannot create {dest}: {e}"]) from None
    files: dict[str, Path] = {}
    attempts: list[str] = []
    with download_lock(dest):
        for fs in spec.files:
            final = dest / fs.filename
            if _already_good(fs, final):
                files[fs.role] = final
                continue
            path, failures = fetch_file(fs, dest, mirrors, progress)
            if path is None:
                attempts.append(f"{fs.filename}: " + "; ".join(failures))
            else:
                files[fs.role] = path
    if attempts:
        raise DownloadFailed(f"could not download {spec.name!r}", attempts)
    return files
