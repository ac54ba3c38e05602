"""``mnistlab doctor``: can this setup train? One command that checks and says how to fix.

It checks the Python, torch, numpy, tensorboard and protobuf versions (and that TensorBoard's writer
imports, which is where a protobuf conflict surfaces); CPU threads and CUDA devices; distributions
installed twice on ``sys.path`` (the classic cause of "two protobuf versions" errors: Python imports
the first copy while pip upgrades the other); installed versions that break another package's
declared requirement (like ``pip check``); every registered dataset (where it was found, whether
its checksums match); and whether the run folder is writable.

Exit status 0 when all is well, 1 with a list of problems and the fix for each.

    mnistlab doctor
    mnistlab doctor --data-dir ~/datasets --run-dir /scratch/runs --json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# (distribution, module to import); the minimum versions are the installed mnistlab's own
# requirements (its Requires-Dist and Requires-Python, from pyproject.toml), read by
# ``declared_requirements``.
CORE_PACKAGES = (
    ("torch", "torch"),
    ("numpy", "numpy"),
    ("tensorboard", "tensorboard"),
    ("protobuf", "google.protobuf"),
)


@dataclass
class Finding:
    """One line of the report: ``status`` is ok, note (worth knowing) or problem (must fix)."""

    check: str
    status: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Install:
    """One installed distribution: its name, version, metadata folder and the folder it is in."""

    name: str
    version: str
    metadata_path: str
    location: str
    requires: tuple[str, ...] = ()
    editable_root: str | None = None
    """For ``pip install -e``: the project folder (from ``direct_url.json``)."""


def normalize(name: str) -> str:
    """PEP 503 name: ``Foo_Bar.baz`` and ``foo-bar-baz`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed(paths: Sequence[str] | None = None) -> dict[str, list[Install]]:
    """Every distribution visible on ``paths`` (default ``sys.path``), by normalized name, in the
    order Python would import them: the first one is the one in use."""
    found: dict[str, list[Install]] = {}
    seen: set[str] = set()
    search = list(sys.path if paths is None else paths)
    for dist in metadata.distributions(path=search):
        name = dist.metadata["Name"]
        if not name:
            continue
        meta = getattr(dist, "_path", None)  # the *.dist-info / *.egg-info folder
        meta_path = os.path.realpath(str(meta)) if meta is not None else ""
        key = meta_path or f"{name}@{dist.locate_file('')}"
        if key in seen:  # the same folder reached through two sys.path entries
            continue
        seen.add(key)
        location = os.path.dirname(meta_path) if meta_path else str(dist.locate_file(""))
        found.setdefault(normalize(name), []).append(
            Install(
                name,
                dist.version or "?",
                meta_path,
                location,
                tuple(dist.requires or ()),
                _editable_root(dist),
            )
        )
    return found


def _editable_root(dist: metadata.Distribution) -> str | None:
    try:
        info = json.loads(dist.read_text("direct_url.json") or "null")
    except ValueError:
        return None
    if not (isinstance(info, dict) and info.get("dir_info", {}).get("editable")):
        return None
    url = str(info.get("url", ""))
    return os.path.realpath(url.removeprefix("file://")) if url.startswith("file://") else None


def _same_install(copies: list[Install]) -> list[Install]:
    """Drop the ``*.egg-info`` that ``pip install -e`` leaves inside the project it installs: with
    the project's ``src`` on ``sys.path`` it looks like a second copy but is the same source."""
    roots = [c.editable_root for c in copies if c.editable_root]
    return [
        c
        for c in copies
        if not (
            c.metadata_path.endswith(".egg-info")
            and c.editable_root is None
            and any(c.metadata_path.startswith(root + os.sep) for root in roots)
        )
    ]


def duplicate_findings(installs: dict[str, list[Install]]) -> list[Finding]:
    """A problem for each distribution with more than one installation."""
    out = []
    for listed in installs.values():
        copies = _same_install(listed)
        if len(copies) < 2:
            continue
        first = copies[0]
        where = "; ".join(f"{c.version} at {c.metadata_path or c.location}" for c in copies)
        others = ", ".join(c.metadata_path or c.location for c in copies[1:])
        out.append(
            Finding(
                "duplicates",
                "problem",
                f"{first.name} is installed {len(copies)} times: {where}. Python uses the first "
                f"({first.version}); pip may change another, and a mix of the two breaks at import",
                f"keep one: remove {others} (or run `python -m pip uninstall {first.name}` until "
                f"none is left and install it once), or take the extra folder off PYTHONPATH",
            )
        )
    return out


def requirement_findings(installs: dict[str, list[Install]]) -> list[Finding]:
    """Declared requirements (``Requires-Dist``) that the installed versions break."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return [
            Finding(
                "requirements",
                "note",
                "the `packaging` library is missing, so declared requirements were not checked",
                "python -m pip install packaging",
            )
        ]
    in_use = {name: copies[0] for name, copies in installs.items()}
    out = []
    for _, inst in sorted(in_use.items()):
        for line in inst.requires:
            try:
                req = Requirement(line)
                if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                    continue
            except (InvalidRequirement, ValueError):
                continue
            have = in_use.get(normalize(req.name))
            if have is None:
                out.append(
                    Finding(
                        "requirements",
                        "problem",
                        f"{inst.name} {inst.version} requires {req}, which is not installed",
                        f"python -m pip install '{req}'",
                    )
                )
                continue
            try:
                ok = req.specifier.contains(Version(have.version), prereleases=True)
            except InvalidVersion:
                continue
            if not ok:
                out.append(
                    Finding(
                        "requirements",
                        "problem",
                        f"{inst.name} {inst.version} requires {req}, but {have.name} {have.version} is "
                        f"installed (at {have.location})",
                        f"python -m pip install '{req.name}{req.specifier}' (or upgrade {inst.name})",
                    )
                )
    return out


def package_findings(paths: Sequence[str] | None = None) -> list[Finding]:
    """Duplicates and broken requirements among the distributions on ``paths``."""
    installs = installed(paths)
    found = duplicate_findings(installs) + requirement_findings(installs)
    if not found:
        count = len(installs)
        found.append(
            Finding(
                "packages",
                "ok",
                f"{count} distributions, each installed once, their declared requirements met",
            )
        )
    return found


def declared_requirements(dist: str = "mnistlab") -> tuple[Any, dict[str, Any]]:
    """``(Requires-Python, {name: Requirement})`` as the installed ``dist`` declares them (extras
    left out); ``(None, {})`` when its metadata cannot be found (running from an uninstalled tree)."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        meta = metadata.metadata(dist)
        texts = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return None, {}
    try:
        python = SpecifierSet(next(iter(meta.get_all("Requires-Python") or []), ""))
    except InvalidSpecifier:
        python = SpecifierSet()
    found: dict[str, Any] = {}
    for text in texts:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            found[normalize(req.name)] = req
    return python, found


def _satisfies(version: str, specifier: Any) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return bool(specifier.contains(Version(version), prereleases=True))
    except InvalidVersion:
        return True  # a version packaging cannot read is not ours to judge


def _same_version(a: str, b: str) -> bool:
    """Equal up to the local label (``2.4.0+cpu`` and ``2.4.0`` are one release)."""
    from packaging.version import InvalidVersion, Version

    try:
        return Version(a).public == Version(b).public
    except InvalidVersion:
        return a.split("+")[0] == b.split("+")[0]


def version_findings() -> list[Finding]:
    """Python and the core libraries: present, new enough for mnistlab's declared requirements,
    and importing the copy pip knows."""
    out = []
    python, requirements = declared_requirements()
    version = platform.python_version()
    ok = python is None or _satisfies(version, python)
    out.append(
        Finding(
            "python",
            "ok" if ok else "problem",
            f"{version} ({sys.executable})",
            "" if ok else f"mnistlab needs Python {python}",
        )
    )
    for dist, module in CORE_PACKAGES:
        req = requirements.get(normalize(dist))
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out.append(
                Finding(
                    dist,
                    "problem",
                    "not installed",
                    f"python -m pip install '{req or dist}'",
                )
            )
            continue
        try:
            mod = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure is the finding
            out.append(
                Finding(
                    dist,
                    "problem",
                    f"{version} is installed but `import {module}` "
                    f"fails: {type(exc).__name__}: {exc}",
                    f"python -m pip install --force-reinstall {dist}",
                )
            )
            continue
        imported = str(getattr(mod, "__version__", version))
        detail = f"{version} ({os.path.dirname(getattr(mod, '__file__', '') or '')})"
        if not _same_version(imported, version):
            out.append(
                Finding(
                    dist,
                    "problem",
                    f"pip says {version} but Python imports "
                    f"{imported} from {getattr(mod, '__file__', '?')}",
                    "two copies are installed: see the duplicates below",
                )
            )
        elif req is not None and not _satisfies(version, req.specifier):
            out.append(
                Finding(
                    dist,
                    "problem",
                    f"{detail} does not satisfy mnistlab's requirement {req}",
                    f"python -m pip install --upgrade '{req}'",
                )
            )
        else:
            out.append(Finding(dist, "ok", detail))
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401

        out.append(Finding("tensorboard writer", "ok", "torch.utils.tensorboard imports"))
    except Exception as exc:  # noqa: BLE001
        out.append(
            Finding(
                "tensorboard writer",
                "problem",
                f"torch.utils.tensorboard fails to import: {type(exc).__name__}: {exc}",
                "python -m pip install --force-reinstall tensorboard protobuf "
                "(and remove duplicate protobuf copies listed below)",
            )
        )
    return out


def device_findings() -> list[Finding]:
    import torch

    out = [
        Finding(
            "cpu",
            "ok",
            f"{os.cpu_count()} cores; torch uses {torch.get_num_threads()} "
            "threads (train.threads changes it)",
        )
    ]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out.append(
            Finding(
                "cuda",
                "ok",
                f"{len(names)} device(s): {', '.join(names)} (CUDA {torch.version.cuda})",
            )
        )
    else:
        why = "torch is a CPU-only build" if torch.version.cuda is None else "no device visible"
        out.append(Finding("cuda", "note", f"no CUDA device ({why}); training runs on the CPU"))
    return out


def dataset_findings(data_dir: str | None = None) -> list[Finding]:
    """Where each registered dataset was found and whether its files pass verification."""
    from mnistlab.data import DATASETS, locate, verify
    from mnistlab.errors import DataError

    out = []
    for spec in DATASETS.values():
        check = f"dataset {spec.name}"
        try:
            loc = locate(spec, data_dir, download=False)
        except DataError:
            fix = f"mnistlab data download {spec.name} (or --data-dir DIR with its four files)"
            status = "problem" if spec.bundled else "note"
            out.append(
                Finding(
                    check,
                    status,
                    "not found offline"
                    + ("" if spec.bundled else "; it is downloaded on first use"),
                    fix,
                )
            )
            continue
        where = f"{loc.source}: {loc.directory}"
        try:
            report = verify(spec, data_dir)
        except DataError as exc:
            out.append(
                Finding(
                    check,
                    "problem",
                    f"{where}: {exc}",
                    f"delete the files in {loc.directory} and run "
                    f"`mnistlab data download {spec.name}`",
                )
            )
            continue
        if not report.ok:
            out.append(
                Finding(
                    check,
                    "problem",
                    f"{where}: " + "; ".join(report.problems),
                    f"delete the damaged files and run `mnistlab data download {spec.name}`",
                )
            )
            continue
        sums = [c.checksum_ok for c in report.files]
        state = (
            "checksums match"
            if all(sums)
            else "headers and counts verified (no published checksum for this form)"
        )
        out.append(Finding(check, "ok", f"{where}; {state}"))
    return out


def run_dir_finding(run_dir: str | Path = "runs") -> Finding:
    """Can a run folder be created and written at ``run_dir``? (Leaves nothing behind.)"""
    target = Path(run_dir).expanduser().absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return Finding(
            "run folder",
            "problem",
            f"{probe} is a file, so {target} cannot be created",
            "choose another folder with --run-dir",
        )
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return Finding(
            "run folder",
            "problem",
            f"{probe} is not writable ({exc.strerror or exc})",
            f"choose another folder with --run-dir, or `chmod u+w {probe}`",
        )
    note = "" if target.exists() else f" (will be created inside {probe})"
    return Finding("run folder", "ok", f"{target} is writable{note}")


def collect(
    *, paths: Sequence[str] | None = None, data_dir: str | None = None, run_dir: str | Path = "runs"
) -> list[Finding]:
    """Every check; ``paths`` replaces ``sys.path`` for the package scan (tests pass fake ones)."""
    return (
        version_findings()
        + device_findings()
        + package_findings(paths)
        + dataset_findings(data_dir)
        + [run_dir_finding(run_dir)]
    )


def exit_status(findings: Iterable[Finding]) -> int:
    """0 when nothing is a problem, else 1."""
    return 1 if any(f.status == "problem" for f in findings) else 0


def render(findings: Iterable[Finding]) -> str:
    findings = list(findings)
    width = max(len(f.check) for f in findings)
    lines = ["mnistlab doctor"]
    for f in findings:
        label = {"ok": "ok", "note": "note", "problem": "PROBLEM"}[f.status]
        lines.append(f"  {label:<8} {f.check:<{width}}  {f.detail}")
    problems = [f for f in findings if f.status == "problem"]
    if not problems:
        lines.append("All is well: this setup can train.")
        return "\n".join(lines)
    lines.append(f"{len(problems)} problem(s):")
    for i, f in enumerate(problems, start=1):
        lines.append(f"  {i}. {f.check}: {f.detail}")
        lines.append(f"     fix: {f.fix}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "doctor",
        help="check that this setup can train (versions, duplicates, devices, data)",
        description="Check Python and library versions, duplicate installations, broken "
        "requirements, devices, datasets and the run folder. Exit 1 on any problem.",
    )
    p.add_argument("--data-dir", metavar="DIR", help="also look for datasets in this folder")
    p.add_argument(
        "--run-dir",
        metavar="DIR",
        default="runs",
        help="the run folder to check for writing (default: runs)",
    )
    p.add_argument("--json", action="store_true", help="print the findings as one JSON object")
    p.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    findings = collect(data_dir=args.data_dir, run_dir=args.run_dir)
    status = exit_status(findings)
    if args.json:
        print(json.dumps({"ok": status == 0, "findings": [asdict(f) for f in findings]}))
    else:
        print(render(findings))
    return status
