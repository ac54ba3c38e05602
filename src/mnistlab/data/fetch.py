"""Download dataset files from their mirrors, verified, and atomically (urllib only).

Each file is streamed into a ``.part`` temp file in the destination folder, hashed as it arrives,
and renamed to its final name only once its size, md5 and sha256 match the published values. A
404, a timeout, a dropped connection, a short or corrupt body: the temp file is deleted and the
next mirror is tried. A half file never sits under a final name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from mnistlab.data.registry import DatasetSpec, FileSpec
from mnistlab.errors import DataError

ProgressCallback = Callable[[str, int, int | None], None]
"""Called as ``progress(filename, bytes_done, bytes_total)``; ``bytes_total`` may be None."""

TIMEOUT_S = 30.0
_CHUNK = 1 << 16
_USER_AGENT = "mnistlab/0.1 (dataset download; urllib)"


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
        fd, tmp_name = tempfile.mkstemp(prefix=fs.filename + ".", suffix=".part", dir=dest)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                md5, sha = _stream(url, out, fs, progress)
                out.flush()
                os.fsync(out.fileno())
            if fs.md5 is not None and md5 != fs.md5:
                raise _BadFile(f"md5 {md5} is not the published {fs.md5} (corrupt file)")
            if fs.sha256 is not None and sha != fs.sha256:
                raise _BadFile(f"sha256 {sha} is not the published {fs.sha256} (corrupt file)")
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a dataset is for everyone to read
            os.replace(tmp, final)
            return final, failures
        except _BadFile as e:
            failures.append(f"{url}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    return None, failures


def fetch_dataset(
    spec: DatasetSpec,
    dest: Path,
    *,
    mirrors: Sequence[str],
    progress: ProgressCallback | None = None,
) -> dict[str, Path]:
    """Fetch every file of ``spec`` into ``dest`` (skipping ones already there and verified).

    Raises DownloadFailed listing, for each file that no mirror could deliver, every mirror's
    answer. Files that did arrive verified are kept: they are complete and correct.
    """
    if not mirrors:
        raise DownloadFailed(f"dataset {spec.name!r} has no download mirrors", ["no mirrors known"])
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadFailed(f"cannot create {dest}: {e}", [f"cannot create {dest}: {e}"]) from None
    files: dict[str, Path] = {}
    attempts: list[str] = []
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
