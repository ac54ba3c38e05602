"""The Python environment ``mnistlab doctor`` checks: Python and the core libraries against
mnistlab's declared requirements, distributions installed twice on ``sys.path``, and installed
versions that break another package's declared requirement (like ``pip check``).

Read with ``importlib.metadata`` and compared with ``packaging``; nothing here imports the
packages it inspects except to see which copy Python loads.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
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


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one), for the figures that
    name their machine: benchmarks, the lessons, the ablation and the pretrained manifest."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
