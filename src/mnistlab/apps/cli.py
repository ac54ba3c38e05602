"""The ``mnistlab`` command: parse, dispatch, turn errors into one line and an exit status.

Each subcommand lives in its own module with ``register(subparsers)``, which adds its parser and
sets ``func``; this file only wires them together.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import io
import os
import signal
import sys
from collections.abc import Iterator

from mnistlab import __version__
from mnistlab.errors import MnistlabError

# Subcommand modules, in the order ``mnistlab --help`` lists them.
COMMANDS = [
    "mnistlab.apps.train_cmd",
    "mnistlab.apps.data_cmd",
    "mnistlab.apps.board_cmd",
    "mnistlab.apps.plot_cmd",
    "mnistlab.apps.doctor",
    "mnistlab.apps.eval_cmd",
    "mnistlab.apps.predict_cmd",
    "mnistlab.apps.export_cmd",
    "mnistlab.apps.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnistlab",
        description="Train MNIST-family classifiers exactly as the classic TensorFlow programs did.",
    )
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def _quiet_shutdown() -> None:
    """The person asked to stop and everything is saved: a further Ctrl-C while Python shuts
    down must not print a traceback from some library's exit hook, so it is ignored from here."""
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)


# Characters mnistlab prints, as plain ASCII for a terminal or pipe that cannot show them.
_PLAIN = {"±": "+/-", "—": "--", "–": "-", "…": "...", "×": "x", "·": ".", "→": "->", "≈": "~"}
_PLAIN |= {"≥": ">=", "≤": "<=", "‘": "'", "’": "'", "“": '"', "”": '"', "µ": "u", "°": " deg"}
STREAM_ERRORS = "mnistlab-plain"


def _plain(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler: what the stream cannot encode, written as ASCII instead of raising.

    The typographic characters of tables and messages become their ASCII spelling; anything
    else becomes an escape (``\\xe9``, ``\\u4e2d``), and a byte of a file name that was not
    UTF-8 (decoded by Python as a lone surrogate) is shown as that byte, ``\\xff``."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = []
    for char in error.object[error.start : error.end]:
        code = ord(char)
        if char in _PLAIN:
            out.append(_PLAIN[char])
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the undecodable byte itself
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(char.encode("ascii", "backslashreplace").decode("ascii"))
    return "".join(out), error.end


codecs.register_error(STREAM_ERRORS, _plain)


def tolerant_streams() -> None:
    """Make stdout and stderr write every character they are given: under ``LC_ALL=C``,
    ``PYTHONIOENCODING=ascii`` or a Latin-1 terminal, what their encoding lacks is spelled in
    ASCII instead of raising ``UnicodeEncodeError`` in the middle of a table or a message."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            with contextlib.suppress(ValueError, io.UnsupportedOperation):  # closed, detached
                stream.reconfigure(errors=STREAM_ERRORS)


def interrupted() -> int:
    """Ctrl-C outside training (while imports run, while a command works): one line, 130."""
    _quiet_shutdown()
    with contextlib.suppress(Exception):
        print("mnistlab: interrupted", file=sys.stderr)
    return 130


@contextlib.contextmanager
def _ctrl_c_noted() -> Iterator[None]:
    """Ctrl-C while the block runs always ends it with ``KeyboardInterrupt``, even where a
    library's code happened to swallow the one Python raised (seen once, in a CI run on a busy
    machine: a SIGINT sent while ``import torch`` ran, and the command ran on and exited 0)."""
    noted: list[int] = []

    def on_sigint(signum: int, frame: object) -> None:
        noted.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: nothing to note
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if noted:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    tolerant_streams()
    try:
        with _ctrl_c_noted():  # the subcommands' modules import torch: the slow first seconds
            parser = build_parser()
        return _main(parser, argv)
    except KeyboardInterrupt:  # also while the subcommands' modules (torch ...) are imported
        return interrupted()


def _main(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MnistlabError as exc:
        from mnistlab.parallel.launch import STOP_EXIT_CODES, launcher_reports

        asked = exc.exit_code in STOP_EXIT_CODES  # a stop asked for: Ctrl-C, SIGTERM, SIGHUP
        kind = "" if asked else "error: "
        if asked:
            _quiet_shutdown()

        if not launcher_reports(exc):  # a --workers worker: its launcher prints it, once
            print(f"mnistlab: {kind}{exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `mnistlab ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
