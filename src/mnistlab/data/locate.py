"""Find a dataset's four files offline first, download them only as a last resort, verify them.

Lookup order: an explicit ``data_dir`` (else ``$MNISTLAB_DATA``), the user cache
(``$XDG_CACHE_HOME/mnistlab/<name>`` or ``~/.cache/mnistlab/<name>``), the system folder
(``/usr/share/datasets/<name>``, root overridable by ``$MNISTLAB_SYSTEM_DATA``), then a download
into the cache. ``mnist-sample`` lives inside the package. Each folder is tried as
``<dir>/<name>`` and then ``<dir>`` itself, and each file may be ``.gz`` or uncompressed.

Nothing here trusts a file: ``load_arrays`` and ``verify`` check checksums (where known), IDX
headers, counts and label ranges, and every problem is one ``DataError`` naming the file.
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

import numpy as np

from mnistlab.data.fetch import DownloadFailed, ProgressCallback, fetch_dataset
from mnistlab.data.idx import encode_idx, is_gzip, read_idx
from mnistlab.data.registry import DATASETS, ROLES, DatasetSpec, FileSpec, get_dataset
from mnistlab.errors import DataError

__all__ = [
    "DatasetNotFound",
    "Located",
    "ProgressCallback",
    "VerifyReport",
    "FileCheck",
    "candidate_dirs",
    "locate",
    "download",
    "verify",
    "load_arrays",
    "repair_advice",
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


# ---------------------------------------------------------------------------------- verification


@dataclass
class FileCheck:
    """The result of checking one file."""

    role: str
    path: Path
    size: int
    size_ok: bool | None = None  # None: not comparable (uncompressed or repackaged)
    checksum_ok: bool | None = None  # None: no published checksum for this form
    checksum_note: str = ""
    shape: tuple[int, ...] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    """Per-file checks plus the checks across files (counts agree, label range)."""

    located: Located
    files: list[FileCheck]
    problems: list[str]
    other_dataset: DatasetSpec | None = None
    """Set when the files are another registered dataset's (their checksums say so)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def _md5_sha256(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _check_checksum(fs: FileSpec, check: FileCheck, arr: np.ndarray | None) -> None:
    """Compare the file as stored (or, failing that, its content) with the published checksums.

    The published .gz checksum is tried first; when it does not match (or the file is stored
    uncompressed) the md5 of the IDX content is compared instead, so a repackaged .gz (Debian's
    have a rewritten gzip header) or a gunzipped file is still checked, not just trusted.
    """
    gz = is_gzip(check.path)
    stored = ""
    if gz and fs.md5:
        stored, sha = _md5_sha256(check.path)
        if stored == fs.md5 and (fs.sha256 is None or sha == fs.sha256):
            check.size_ok, check.checksum_ok = True, True
            check.checksum_note = (
                "md5" + ("+sha256" if fs.sha256 else "") + " match the published file"
            )
            return
    if fs.raw_md5 and arr is not None:
        got = hashlib.md5(encode_idx(arr)).hexdigest()
        check.checksum_ok = got == fs.raw_md5
        if check.checksum_ok:
            check.checksum_note = "content md5 matches the published data" + (
                " (gzip header differs from the published .gz)" if gz else ""
            )
            return
        check.checksum_note = f"content md5 {got} differs from the published {fs.raw_md5}"
    elif stored:
        check.checksum_ok = False
        check.checksum_note = f"md5 {stored} differs from the published {fs.md5}"
    elif arr is None:
        check.checksum_note = "not checked (the file cannot be read)"
        return
    else:
        check.checksum_note = "no published checksum for this form of the file; header checks only"
        return
    if gz and fs.size is not None:
        check.size_ok = check.size == fs.size
    size = "" if check.size_ok is not False else f", and its size {check.size} is not {fs.size}"
    check.problems.append(
        f"{check.path}: {check.checksum_note}{size}: corrupt, truncated or a different dataset"
    )


def _check_file(fs: FileSpec, path: Path, checksums: bool) -> tuple[FileCheck, np.ndarray | None]:
    check = FileCheck(fs.role, path, path.stat().st_size)
    arr: np.ndarray | None = None
    try:
        arr = read_idx(path)
        check.shape = tuple(arr.shape)
    except DataError as e:
        check.problems.append(str(e))
    if checksums:
        _check_checksum(fs, check, arr)
    if arr is not None:
        want_ndim = 3 if fs.role.endswith("images") else 1
        if arr.ndim != want_ndim or arr.dtype != np.uint8:
            check.problems.append(
                f"{path}: expected {want_ndim}-D uint8 {fs.role.replace('_', ' ')}, "
                f"found {arr.ndim}-D {arr.dtype} with shape {arr.shape}"
            )
    return check, arr


def _cross_checks(
    spec: DatasetSpec, arrays: dict[str, np.ndarray], files: dict[str, Path]
) -> list[str]:
    """Counts agree between images and labels; labels lie in [0, num_classes); image sizes agree."""
    problems = []
    for part in ("train", "test"):
        imgs, labels = arrays.get(f"{part}_images"), arrays.get(f"{part}_labels")
        if imgs is not None and labels is not None and len(imgs) != len(labels):
            problems.append(
                f"{files[f'{part}_images']} has {len(imgs)} images but "
                f"{files[f'{part}_labels']} has {len(labels)} labels"
            )
        if labels is not None and labels.size:
            bad = int(np.count_nonzero(labels >= spec.num_classes))
            if bad:
                problems.append(
                    f"{files[f'{part}_labels']}: {bad} labels outside 0..{spec.num_classes - 1} "
                    f"(largest {int(labels.max())})"
                )
    tr, te = arrays.get("train_images"), arrays.get("test_images")
    if tr is not None and te is not None and tr.shape[1:] != te.shape[1:]:
        problems.append(f"train images are {tr.shape[1:]} but test images are {te.shape[1:]}")
    c, h, w = spec.input_shape
    expected = (h, w) if c == 1 else (h, w, c)
    for part, imgs in (("train", tr), ("test", te)):
        if imgs is not None and imgs.ndim > 1 and imgs.shape[1:] != expected:
            problems.append(
                f"{files[f'{part}_images']}: images are {'x'.join(map(str, imgs.shape[1:]))} "
                f"but {spec.name} images are {'x'.join(map(str, expected))}"
            )
    return problems


def verify(name: str | DatasetSpec, data_dir: str | os.PathLike[str] | None = None) -> VerifyReport:
    """Check every file of a dataset already on disk (never downloads)."""
    located = locate(name, data_dir, download=False)
    return _verify_located(located, checksums=True)[0]


def _verify_located(
    located: Located, checksums: bool
) -> tuple[VerifyReport, dict[str, np.ndarray]]:
    spec = located.spec or get_dataset(located.name)
    checks: list[FileCheck] = []
    arrays: dict[str, np.ndarray] = {}
    readable: dict[str, np.ndarray] = {}
    for role in ROLES:
        check, arr = _check_file(spec.file(role), located.files[role], checksums)
        checks.append(check)
        if arr is not None:
            readable[role] = arr
            if check.ok:
                arrays[role] = arr
    problems = [p for c in checks for p in c.problems]
    if any(c.checksum_ok is False for c in checks):
        other = identify(located.files, readable, exclude=spec.name)
        if other is not None:
            title = other.title.split(" (")[0]
            problems = [
                f"the files in {located.directory} are {title}, not {spec.title.split(' (')[0]}"
                f" (their checksums match {other.name!r}): add --dataset {other.name}"
                f" (or set data.dataset = {other.name!r})"
            ]
            return VerifyReport(located, checks, problems, other), arrays
    # Across files, every file that reads as the right kind of array takes part, also one whose
    # checksum failed: a label out of range or a count that disagrees is the more specific news.
    well_formed = {
        role: arr
        for role, arr in readable.items()
        if arr.dtype == np.uint8 and arr.ndim == (3 if role.endswith("images") else 1)
    }
    problems += _cross_checks(spec, well_formed, located.files)
    return VerifyReport(located, checks, problems), arrays


def identify(
    files: dict[str, Path], arrays: dict[str, np.ndarray] | None = None, *, exclude: str = ""
) -> DatasetSpec | None:
    """The registered dataset whose published checksums all four files match, if any.

    Each file is compared as stored (the published .gz) and by content (the md5 of its IDX bytes,
    so a repackaged .gz or an uncompressed file is recognised too). ``arrays`` (already read) saves
    reading the files again; a file that cannot be read matches nothing.
    """
    arrays = arrays or {}
    sums: dict[str, set[str]] = {}
    for role, path in files.items():
        found = set()
        if is_gzip(path):
            found.add(_md5_sha256(path)[0])
        arr = arrays.get(role)
        if arr is None:
            try:
                arr = read_idx(path)
            except DataError:
                arr = None
        if arr is not None:
            found.add(hashlib.md5(encode_idx(arr)).hexdigest())
        sums[role] = found
    for spec in DATASETS.values():
        if spec.name == exclude:
            continue
        if all(
            role in sums and {spec.file(role).md5, spec.file(role).raw_md5} & sums[role]
            for role in ROLES
        ):
            return spec
    return None


_FIX_BY_SOURCE = {
    "data-dir": "replace it with a good copy (`mnistlab data download {name}` fetches one into "
    "the cache), or point --data-dir at a folder that holds one",
    "env": "replace it with a good copy (`mnistlab data download {name}` fetches one into the "
    "cache), or unset MNISTLAB_DATA to use the cache or a download",
    "cache": "fetch it again with `mnistlab data download {name}` (it replaces the bad file)",
    "download": "fetch it again with `mnistlab data download {name}` (it replaces the bad file)",
    "system": "reinstall the system package that installed it, or pass --data-dir with a good copy",
    "bundled": "reinstall mnistlab (pip install --force-reinstall mnistlab)",
}


def repair_advice(located: Located) -> str:
    """How to mend a damaged file where it was found: fetch it again into mnistlab's own cache,
    never delete a folder of the user's."""
    fix = _FIX_BY_SOURCE.get(located.source, "replace it with a good copy")
    return fix.format(name=located.name)


def load_arrays(located: Located, *, check_checksums: bool = True) -> dict[str, np.ndarray]:
    """The four arrays (uint8), after every check passes; otherwise one DataError with them all:
    what is wrong with which file, and how to fix it where the files were found."""
    report, arrays = _verify_located(located, checksums=check_checksums)
    if not report.ok:
        where = {"data-dir": "--data-dir", "env": "MNISTLAB_DATA", "cache": "the cache"}.get(
            located.source, located.source
        )
        if report.other_dataset is not None:
            raise DataError(report.problems[0])
        raise DataError(
            f"dataset {located.name!r} in {located.directory} ({where}) failed verification: "
            + "; ".join(report.problems)
            + f"; to fix: {repair_advice(located)}"
        )
    return arrays
