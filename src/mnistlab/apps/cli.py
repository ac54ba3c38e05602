"""The ``mnistlab`` command: parse, dispatch, turn errors into one line and an exit status.

Each subcommand lives in its own module with ``register(subparsers)``, which adds its parser and
sets ``func``; this file only wires them together.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MnistlabError as exc:
        asked = exc.exit_code in (130, 143)  # a stop the user asked for: Ctrl-C or SIGTERM
        kind = "" if asked else "error: "
        if asked:
            _quiet_shutdown()
        from mnistlab.parallel.launch import launcher_reports

        if not launcher_reports(exc):  # a --workers worker: its launcher prints it, once
            print(f"mnistlab: {kind}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        _quiet_shutdown()
        print("mnistlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mnistlab ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
