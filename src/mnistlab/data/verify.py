"""Verify a located dataset before anything trains on it: every file, then the files together.

Per file: the IDX header against the byte size, the element type and rank, and the checksum as
stored (the published ``.gz``) or of the content (so a repackaged or gunzipped copy is still
checked). Across files: image and label counts agree, labels lie in ``0..num_classes-1``, image
sizes agree with each other and with the dataset's. Every file that reads as an array takes part
in the checks across files, also one whose checksum failed, so the report names each defect.
Files another registered dataset's checksums match are named as that dataset (``identify``).
``load_arrays`` turns any problem into one ``DataError`` that says how to mend it where the files
were found.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnistlab.data.idx import encode_idx, is_gzip, read_idx
from mnistlab.data.locate import Located, locate
from mnistlab.data.registry import DATASETS, ROLES, DatasetSpec, FileSpec, get_dataset
from mnistlab.errors import DataError

__all__ = ["FileCheck", "VerifyReport", "identify", "load_arrays", "repair_advice", "verify"]


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
