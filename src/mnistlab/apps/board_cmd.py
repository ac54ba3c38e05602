"""``mnistlab board``: the real TensorBoard, on 127.0.0.1, for existing runs.

    mnistlab board                 # every run under ./runs
    mnistlab board runs --port 0   # any free port

TensorBoard runs as a child process (``python -m tensorboard.main``), in its own session so that a
Ctrl-C meant for training does not kill it; it is stopped when the command ends. ``start_board``
is shared with ``mnistlab train --tensorboard``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mnistlab.errors import MnistlabError, TrackingError
from mnistlab.io.callbacks import Callback

DEFAULT_PORT = 6006


def _error(message: str) -> MnistlabError:
    return TrackingError(message)


def _family(host: str) -> socket.AddressFamily:
    """The address family of ``host``, or one clear error for a name or address that is none."""
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise _error(
            f"--host {host} is not a valid address ({reason}): use 127.0.0.1 (this machine "
            "only) or 0.0.0.0 (every network)"
        ) from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            raise _error(
                f"cannot serve on --host {host}: {exc.strerror or exc} (is it an address of "
                "this machine? 127.0.0.1 or 0.0.0.0 always are)"
            ) from None
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@dataclass
class Board:
    """A running TensorBoard server."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def start_board(
    logdir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    log: str | Path | None = None,
    wait: float = 60.0,
) -> Board:
    """Start TensorBoard on ``logdir`` and return once it answers HTTP (or raise).

    ``port=None`` takes 6006 when free, else any free port; ``port=0`` always any free port.
    """
    if port is None:
        port = DEFAULT_PORT if _port_free(host, DEFAULT_PORT) else free_port(host)
    elif port == 0:
        port = free_port(host)
    elif not 0 < port < 65536:
        raise _error(f"--port must be between 1 and 65535 (or 0 for any free one); got {port}")
    else:
        free_port(host)  # a bad --host is its own error, not "port taken"
        if not _port_free(host, port):
            # Another server (often another TensorBoard, serving other runs) answers there: its
            # address must not be printed as ours.
            raise _error(
                f"port {port} on {host} is already in use (another TensorBoard?): choose "
                "another --port, or --port 0 for any free one"
            )
    log_path = Path(log) if log else Path(logdir) / "tensorboard.log"
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(logdir),
        "--host",
        host,
        "--port",
        str(port),
        "--load_fast",
        "false",
        "--reload_interval",
        "5",
    ]
    try:
        out: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - the child keeps writing to it
    except OSError as exc:
        raise _error(
            f"cannot write the TensorBoard log {log_path}: {exc.strerror or exc}"
        ) from None
    with out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url_host = f"[{host}]" if ":" in host else host
    board = Board(process, f"http://{url_host}:{port}/", log_path)
    try:
        return _wait_until_it_answers(board, wait)
    except BaseException:  # a stop (Ctrl-C, SIGTERM) while it starts must not leave it running
        board.stop()
        raise


def _wait_until_it_answers(board: Board, wait: float) -> Board:
    process, log_path = board.process, board.log
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise _error(
                f"TensorBoard stopped at start (exit {process.returncode}): "
                + " / ".join(tail)
                + f"; try another --port (full log: {log_path})"
            )
        try:
            with urllib.request.urlopen(board.url + "data/logdir", timeout=2) as response:
                if response.status == 200 and process.poll() is None:
                    return board
        except OSError:
            time.sleep(0.25)
    raise _error(f"TensorBoard did not answer at {board.url} within {wait:.0f} s (log: {log_path})")


class BoardCallback(Callback):
    """``mnistlab train --tensorboard``: serve the run folder while it trains (main rank).

    When the command ends the server stops, except in an interactive terminal, where it keeps
    serving until Ctrl-C so the finished run can still be looked at.
    """

    def __init__(self, run_dir: Path, *, host: str = "127.0.0.1", port: int | None = None):
        self.run_dir, self.host, self.port = run_dir, host, port
        self.board: Board | None = None

    def on_start(self, run: Any) -> None:
        if not run.is_main or self.board is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.board = start_board(self.run_dir, host=self.host, port=self.port)
        print(
            f"mnistlab: TensorBoard at {self.board.url} (logdir {self.run_dir})",
            file=sys.stderr,
            flush=True,
        )
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        if self.board is None:
            return
        if sys.stdin.isatty() and sys.stderr.isatty() and self.board.process.poll() is None:
            print(
                f"mnistlab: TensorBoard keeps serving at {self.board.url}; Ctrl-C stops it",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                self.board.process.wait()
        self.board.stop()
        self.board = None


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "board",
        help="start TensorBoard for existing runs (127.0.0.1)",
        description="Start the real TensorBoard on a folder of runs and print its address.",
    )
    p.add_argument(
        "runs_dir",
        nargs="?",
        default="runs",
        metavar="RUNS_DIR",
        help="a run folder or a folder of runs (default: runs)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port (default: {DEFAULT_PORT}, or a free one if it is taken; 0: any free)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 shares "
        "it with your network)",
    )
    p.set_defaults(func=run_board)


def run_board(args: argparse.Namespace) -> int:
    logdir = Path(args.runs_dir)
    if not logdir.is_dir():
        raise _error(
            f"{logdir} is not a folder: name a run folder or a folder of runs "
            "(`mnistlab train --run-dir DIR` chooses where a run goes)"
        )
    log = Path(tempfile.gettempdir()) / f"mnistlab-tensorboard-{os.getpid()}.log"
    # SIGTERM is caught from before the child starts: from the printed address on, a TERM-ed
    # command always stops its TensorBoard (start_board stops it itself if the stop comes sooner).
    previous = _stop_on_sigterm()
    board: Board | None = None
    try:
        board = start_board(logdir, host=args.host, port=args.port, log=log)
        print(f"TensorBoard at {board.url} (logdir {logdir}); Ctrl-C stops it", flush=True)
        code = board.process.wait()
    except KeyboardInterrupt:
        code = 0
    except _Terminated:
        code = 128 + signal.SIGTERM  # 143, the convention for a TERM-ed command
    finally:
        if board is not None:
            board.stop()  # TensorBoard runs in its own session: it never outlives this command
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if code not in (0, 128 + signal.SIGTERM):
        raise _error(f"TensorBoard stopped with exit status {code} (log: {log})")
    return code


class _Terminated(Exception):
    """SIGTERM arrived while TensorBoard served: stop it, then exit 143."""


def _stop_on_sigterm() -> Any:
    """Turn SIGTERM into ``_Terminated`` so ``finally`` stops the child; the old handler, or
    None where signals cannot be set (not the main thread)."""

    def handler(signum: int, frame: object) -> None:
        raise _Terminated

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None
