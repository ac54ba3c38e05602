"""``mnistlab doctor``: can this setup train? One command that checks and says how to fix.

It checks the Python, torch, numpy, tensorboard and protobuf versions (and that TensorBoard's writer
imports, which is where a protobuf conflict surfaces); CPU threads and CUDA devices; distributions
installed twice on ``sys.path`` (the classic cause of "two protobuf versions" errors: Python imports
the first copy while pip upgrades the other); installed versions that break another package's
declared requirement (like ``pip check``); every registered dataset (where it was found, whether
its checksums match); and whether the run folder is writable.

The Python environment's checks are ``apps/environment.py``; this module adds the machine, the
data and the run folder, and the report. Exit status 0 when all is well, 1 with a list of problems and the fix for each.

    mnistlab doctor
    mnistlab doctor --data-dir ~/datasets --run-dir /scratch/runs --json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

from mnistlab.apps.environment import (
    CORE_PACKAGES,
    Finding,
    Install,
    declared_requirements,
    duplicate_findings,
    installed,
    normalize,
    package_findings,
    requirement_findings,
    version_findings,
)

__all__ = [
    "CORE_PACKAGES",
    "Finding",
    "Install",
    "collect",
    "dataset_findings",
    "declared_requirements",
    "device_findings",
    "duplicate_findings",
    "exit_status",
    "installed",
    "normalize",
    "package_findings",
    "register",
    "render",
    "requirement_findings",
    "run_dir_finding",
    "run_doctor",
    "version_findings",
]


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
    from mnistlab.data.verify import repair_advice
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
                    repair_advice(loc),
                )
            )
            continue
        if not report.ok:
            out.append(
                Finding(
                    check,
                    "problem",
                    f"{where}: " + "; ".join(report.problems),
                    repair_advice(loc),
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
