"""Find a dataset's four files offline first, download them only as a last resort.

Lookup order: an explicit ``data_dir`` (else ``$MNISTLAB_DATA``), the user cache
(``$XDG_CACHE_HOME/mnistlab/<name>`` or ``~/.cache/mnistlab/<name>``), the system folder
(``/usr/share/datasets/<name>``, root overridable by ``$MNISTLAB_SYSTEM_DATA``), then a download
into the cache. ``mnist-sample`` lives inside the package. Each folder is tried as
``<dir>/<name>`` and then ``<dir>`` itself, and each file may be ``.gz`` or uncompressed.

The MNIST family shares its file names, so a folder's files are never taken for another
dataset's: a folder whose labels files are another published dataset's is passed over, and said
so. Nothing here trusts a file beyond that: ``data.verify`` checks checksums (where known), IDX
headers, counts and label ranges before anything trains.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mnistlab.data.fetch import DownloadFailed, ProgressCallback, fetch_dataset
from mnistlab.data.idx import is_gzip
from mnistlab.data.registry import DATASETS, DatasetSpec, FileSpec, get_dataset
from mnistlab.errors import DataError

__all__ = [
    "DatasetNotFound",
    "Located",
    "ProgressCallback",
    "candidate_dirs",
    "locate",
    "download",
    "cache_root",
    "system_root",
    "find_files",
]

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


class DatasetNotFound(DataError):
    """No folder holds the dataset's files and no download delivered them: the dataset is absent.

    Only this may be answered by falling back to another dataset; files that were found but fail
    verification raise a plain ``DataError`` that says what is wrong with which file.
    """


@dataclass(frozen=True)
class Located:
    """Where a dataset's files were found (``source`` says which rule found them)."""

    name: str
    directory: Path
    source: str  # "data-dir" | "env" | "cache" | "system" | "download" | "bundled"
    files: dict[str, Path]
    spec: DatasetSpec | None = field(default=None, compare=False, repr=False)


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/mnistlab`` or ``~/.cache/mnistlab``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "mnistlab"


def system_root() -> Path:
    """Where Debian's dataset packages install (``$MNISTLAB_SYSTEM_DATA`` overrides, for tests)."""
    return Path(os.environ.get("MNISTLAB_SYSTEM_DATA") or "/usr/share/datasets")


def _utf8_folder(folder: str | os.PathLike[str], what: str) -> Path:
    """``folder`` as a Path, refused when its name is not UTF-8 text: the folder a run used is
    written into its config.toml, checkpoints and --json summary, all UTF-8."""
    path = Path(folder)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise DataError(
            f"{what}{shown} has a name that is not UTF-8 text (the \\x byte): mnistlab records "
            "the data folder in the run's config.toml and checkpoints, which are UTF-8; rename "
            "the folder, or link it from a path that is UTF-8 (ln -s)"
        ) from None
    return path


def candidate_dirs(
    name: str | DatasetSpec, data_dir: str | os.PathLike[str] | None = None
) -> list[tuple[str, Path]]:
    """The (source, folder) pairs ``locate`` tries, in order."""
    spec = get_dataset(name)
    if data_dir is not None:
        data_dir = _utf8_folder(data_dir, "--data-dir ")
    if spec.bundled:
        # Always present; a data_dir counts only through its NAME/ subfolder, because the sample
        # shares MNIST's file names and a folder of full MNIST must not pass for it.
        sub = (
            [("data-dir", Path(data_dir).expanduser() / spec.name)] if data_dir is not None else []
        )
        return [*sub, ("bundled", SAMPLE_DIR)]
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        return [("data-dir", d / spec.name), ("data-dir", d)]
    out: list[tuple[str, Path]] = []
    env = os.environ.get("MNISTLAB_DATA")
    if env:
        d = _utf8_folder(env, "MNISTLAB_DATA=").expanduser()
        out += [("env", d / spec.name), ("env", d)]
    out.append(("cache", cache_root() / spec.name))
    out.append(("system", system_root() / spec.name))
    return out


def _names(fs: FileSpec) -> list[str]:
    """Accepted names for a file: as published (.gz), uncompressed, and the common dotted form."""
    names = [fs.filename, fs.raw_filename]
    dotted = fs.raw_filename.replace("-idx", ".idx")
    return names + [n for n in (dotted + ".gz", dotted) if n not in names]


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` exists but cannot be read as a data file (a folder, a symlink loop ...), or
    None when it is a regular file or nothing at all."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symlink loop"
        if os.path.islink(path):
            return f"is a symlink to {os.readlink(path)}, which does not exist"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    return "is not a regular file (a device, pipe or socket)"


def find_files(spec: DatasetSpec, folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The files of ``spec`` present in ``folder`` (role -> path), and the names missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for fs in spec.files:
        hit = next((folder / n for n in _names(fs) if (folder / n).is_file()), None)
        if hit is None:
            missing.append(fs.filename)
        else:
            found[fs.role] = hit
    return found, missing


def _odd_entries(spec: DatasetSpec, folder: Path, missing: list[str]) -> dict[str, str]:
    """For each missing file whose name is taken by something that is not a regular file,
    ``"NAME is a folder, not a file"`` (or a symlink loop ...): say what is there, not "missing"."""
    odd: dict[str, str] = {}
    for fs in spec.files:
        if fs.filename in missing:
            for n in _names(fs):
                why = _not_a_file(folder / n)
                if why:
                    odd[fs.filename] = f"{n} {why}"
                    break
    return odd


def _describe(spec: DatasetSpec, folder: Path, found: dict[str, Path], missing: list[str]) -> str:
    if not folder.is_dir():
        return "no such folder"
    odd = _odd_entries(spec, folder, missing)
    if not found and not odd:
        return "none of the files"
    plain = [m for m in missing if m not in odd]
    notes = ([f"missing {', '.join(plain)}"] if plain else []) + list(odd.values())
    return f"only {len(found)} of 4 files ({'; '.join(notes)})"


def locate(
    name: str | DatasetSpec,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: ProgressCallback | None = None,
    mirrors: Sequence[str] | None = None,
) -> Located:
    """Find the dataset's four files, downloading into the cache only when no folder has them.

    An explicit ``data_dir`` is never silently ignored: if it lacks the files, this raises.
    """
    spec = get_dataset(name)
    looked: list[str] = []
    foreign = False  # a folder held another dataset's files under the same names
    places = candidate_dirs(spec, data_dir)
    if data_dir is not None and not spec.bundled:
        # A data folder is often one dataset's (MNIST's, say), and the MNIST family shares its
        # file names: when it holds another dataset's files, look on where this one would be.
        places += [(s, f) for s, f in candidate_dirs(spec) if s in ("cache", "system")]
    for source, folder in places:
        if source in ("cache", "system") and data_dir is not None and not foreign:
            break  # the data folder lacks the files (or they are damaged): say so, not the cache
        found, missing = find_files(spec, folder)
        if missing:
            looked.append(f"{source}: {folder} ({_describe(spec, folder, found, missing)})")
            continue
        owner = _owner(spec, found)
        if owner is None:
            return Located(spec.name, folder, source, found, spec)
        foreign = True
        looked.append(
            f"{source}: {folder} (holds {owner.title.split(' (')[0]}'s files, not "
            f"{spec.name}'s; for those, --dataset {owner.name})"
        )
    attempts: list[str] = []
    if data_dir is None and not spec.bundled:  # a folder was named: never a download instead
        if download and (mirrors or spec.mirrors):
            try:
                return _download(spec, None, progress, mirrors)
            except DownloadFailed as e:
                attempts = e.attempts
        elif not download:
            attempts = ["not tried (download disabled)"]
    raise DatasetNotFound(_not_found_message(spec, looked, attempts, data_dir, foreign))


LABELS_LIMIT = 1 << 22
"""Bytes read at most from a labels file to tell whose it is (a real one is 60,008 or less)."""


def _owner(spec: DatasetSpec, files: dict[str, Path]) -> DatasetSpec | None:
    """The other published dataset whose files these are, by the checksums of the two small
    labels files (stored and uncompressed); None when they are ``spec``'s or nobody's (then
    verification judges them). Cheap: a few tens of kilobytes, no image file is read."""
    sums: dict[str, set[str]] = {}
    for role in ("train_labels", "test_labels"):
        path = files[role]
        try:
            if path.stat().st_size > LABELS_LIMIT:
                return None
            stored = path.read_bytes()
            raw = gzip.decompress(stored) if is_gzip(path) else stored
        except (OSError, EOFError, zlib.error, gzip.BadGzipFile):
            return None  # unreadable: verification will say what is wrong with it
        sums[role] = {hashlib.md5(stored).hexdigest(), hashlib.md5(raw).hexdigest()}

    def theirs(other: DatasetSpec) -> bool:
        return all(
            {other.file(role).md5, other.file(role).raw_md5} & found for role, found in sums.items()
        )

    if theirs(spec):
        return None
    # The bundled sample claims no folder: tests and users copy its files around as stand-ins.
    others = (o for o in DATASETS.values() if o.name != spec.name and not o.bundled)
    return next((o for o in others if theirs(o)), None)


def _not_found_message(
    spec: DatasetSpec, looked: list[str], attempts: list[str], data_dir: object, foreign: bool
) -> str:
    lines = [
        f"dataset {spec.name!r} not found: it needs {', '.join(spec.filenames)} "
        "(each may also be uncompressed, without .gz).",
        "Looked in:",
        *(f"  - {w}" for w in looked),
    ]
    if attempts:
        lines += ["Download:", *(f"  - {a}" for a in attempts)]
    fix = "put the four files in one of those folders"
    if data_dir is None:
        fix += (
            f", pass --data-dir DIR, set MNISTLAB_DATA=DIR, or run "
            f"`mnistlab data download {spec.name}` where there is network"
        )
    else:
        fix += " or pass a --data-dir that holds them"
        if foreign:
            fix += f" (`mnistlab data download {spec.name}` fetches them into the cache)"
    lines.append(f"To fix: {fix}.")
    return "\n".join(lines)


def download(
    name: str | DatasetSpec,
    dest_dir: str | os.PathLike[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
    mirrors: Sequence[str] | None = None,
) -> Located:
    """Download (and verify) the four files into ``dest_dir`` or the user cache."""
    spec = get_dataset(name)
    if spec.bundled:
        raise DataError(
            f"dataset {spec.name!r} is bundled with mnistlab; there is nothing to download"
        )
    try:
        return _download(spec, dest_dir, progress, mirrors)
    except DownloadFailed as e:
        raise DataError(
            f"download of {spec.name!r} failed:\n" + "\n".join(f"  - {a}" for a in e.attempts)
        ) from None


def _download(
    spec: DatasetSpec,
    dest_dir: str | os.PathLike[str] | None,
    progress: ProgressCallback | None,
    mirrors: Sequence[str] | None,
) -> Located:
    dest = Path(dest_dir) if dest_dir is not None else cache_root() / spec.name
    files = fetch_dataset(spec, dest, mirrors=list(mirrors or spec.mirrors), progress=progress)
    return Located(spec.name, dest, "download", files, spec)
