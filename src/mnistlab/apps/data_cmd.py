"""``mnistlab data``: list, inspect, verify, download and find the datasets.

    mnistlab data list
    mnistlab data info mnist
    mnistlab data verify fashion-mnist --data-dir ~/datasets
    mnistlab data download kmnist
    mnistlab data path mnist-sample

Errors are ``DataError``s; the top-level CLI prints them as one message and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from mnistlab.data.locate import Located, candidate_dirs, download, locate
from mnistlab.data.registry import DATASETS, DatasetSpec, get_dataset
from mnistlab.data.verify import VerifyReport, verify
from mnistlab.errors import DataError
from mnistlab.io.progress import download_progress


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``data`` and its subcommands to the top-level ``mnistlab`` parser."""
    p = subparsers.add_parser(
        "data",
        help="list, inspect, verify, download and locate datasets",
        description="Datasets are found offline first: --data-dir (or $MNISTLAB_DATA), the user "
        "cache, /usr/share/datasets; downloads go into the cache.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    def add(name: str, help: str, with_name: bool = True) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help, description=help)
        if with_name:
            q.add_argument("name", metavar="NAME", help=f"dataset name: {', '.join(DATASETS)}")
        q.add_argument(
            "--data-dir",
            metavar="DIR",
            default=None,
            help="folder holding the four IDX files (.gz or not), or NAME/ subfolders",
        )
        q.set_defaults(func=run_data)
        return q

    add("list", "a table of the registered datasets and where each was found", with_name=False)
    add("info", "files, sizes, checksums, mirrors, licence, and where the dataset was found")
    add("verify", "check every file (checksum, IDX header, counts, labels); exit 1 on any problem")
    d = add("download", "download the four files, verified, into the cache (or --data-dir)")
    d.add_argument(
        "--mirror",
        action="append",
        default=None,
        metavar="URL",
        help="download from this base URL instead of the registered mirrors "
        "(repeatable; tried in order)",
    )
    add("path", "print the folder that holds the dataset's files")


register = add_data_parser  # the name mnistlab.apps.cli looks for


def run_data(args: argparse.Namespace) -> int:
    """Run one ``mnistlab data`` action; returns the exit status."""
    action = args.data_command
    if action == "list":
        return _list(args.data_dir)
    spec = get_dataset(args.name)
    if action == "info":
        return _info(spec, args.data_dir)
    if action == "verify":
        return _verify(verify(spec, args.data_dir))
    if action == "download":
        try:
            located = download(
                spec, args.data_dir, progress=download_progress(), mirrors=args.mirror
            )
        except DataError:
            if sys.stderr.isatty():
                print(file=sys.stderr)  # end a half-drawn progress bar before the error
            raise
        print(f"{spec.name}: 4 files verified in {located.directory}")
        return 0
    if action == "path":
        print(locate(spec, args.data_dir, download=False).directory)
        return 0
    raise DataError(f"unknown data action {action!r}")


def _where(spec: DatasetSpec, data_dir: str | None) -> Located | None:
    try:
        return locate(spec, data_dir, download=False)
    except DataError:
        return None


def _list(data_dir: str | None) -> int:
    rows = [("NAME", "TRAIN/TEST", "CLASSES", "FOUND")]
    for spec in DATASETS.values():
        loc = _where(spec, data_dir)
        found = f"{loc.source}: {loc.directory}" if loc else "not found"
        counts = "4000/1000" if spec.bundled else "60000/10000"
        rows.append((spec.name, counts, str(spec.num_classes), found))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    return 0


def _info(spec: DatasetSpec, data_dir: str | None) -> int:
    loc = _where(spec, data_dir)
    print(f"{spec.name}: {spec.title}")
    print(f"  licence:    {spec.license}")
    print(f"  homepage:   {spec.homepage}")
    print(f"  classes:    {', '.join(spec.class_names)}")
    print(f"  validation: first {spec.validation_size} training images")
    print(f"  found:      {f'{loc.source}: {loc.directory}' if loc else 'not found'}")
    print("  files:")
    for fs in spec.files:
        size = f"{fs.size:,} bytes" if fs.size is not None else "size unknown"
        print(f"    {fs.filename}  ({size})")
        print(f"      md5     {fs.md5 or 'unknown'}")
        if fs.sha256:
            print(f"      sha256  {fs.sha256}")
        if fs.raw_md5:
            print(f"      md5 of uncompressed content  {fs.raw_md5}")
    print("  mirrors:" if spec.mirrors else "  mirrors:    none (bundled with mnistlab)")
    for m in spec.mirrors:
        print(f"    {m}")
    if not loc:
        print("  looked in:")
        for source, folder in candidate_dirs(spec, data_dir):
            print(f"    {source}: {folder}")
    return 0


def _verify(report: VerifyReport) -> int:
    loc = report.located
    print(f"{loc.name} ({loc.source}: {loc.directory})")
    for c in report.files:
        status = "OK  " if c.ok else "FAIL"
        shape = "x".join(map(str, c.shape)) if c.shape else "unreadable"
        print(f"  {status} {c.path.name}  {c.size:,} bytes  {shape}  {c.checksum_note}")
    for p in report.problems:
        print(f"  problem: {p}")
    print("all checks passed" if report.ok else f"FAILED: {len(report.problems)} problem(s)")
    return 0 if report.ok else 1
