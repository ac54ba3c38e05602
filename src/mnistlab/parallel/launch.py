"""``mnistlab train --parallel MODE --workers N``: start N local workers through torchrun's engine.

Outside torchrun, the command re-runs itself under ``torch.distributed.run`` (the library behind
the ``torchrun`` command: standalone rendezvous on a free local port, worker monitoring, the
whole group stopped when one worker fails). Each worker runs the very same command line and, seeing
torchrun's environment, joins the group instead of launching again. These two lines are the same::

    mnistlab train --parallel data --workers 2
    torchrun --standalone --nproc-per-node 2 -m mnistlab train --parallel data

Only the main worker's output reaches the console; every worker's output is kept in a log folder.
When a worker fails, the others are stopped within seconds and one message names the worker and
its cause, read from that worker's own error line rather than from a neighbour's
"connection closed" that merely followed it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from mnistlab.errors import ParallelError
from mnistlab.parallel.dist import HANG_EXIT_CODE, under_torchrun

# Lines that say a worker failed *because a peer had already gone*, not why the group failed.
_KNOCK_ON = re.compile(
    r"connection (closed|reset)|broken pipe|socket|peer|timed out|"
    r"DistBackendError|NCCL|gloo",
    re.IGNORECASE,
)


def wants_launch(mode: str) -> bool:
    """A parallel mode asked for outside torchrun: this process must start the workers."""
    return mode != "none" and not under_torchrun()


def main_local_rank(mode: str, workers: int) -> int:
    """Which worker prints: the loss-holding last stage under pipelining, else the first."""
    return workers - 1 if mode == "pipeline" else 0


def launch(argv: Sequence[str], workers: int, mode: str, *, log_dir: str | None = None) -> int:
    """Run ``mnistlab <argv>`` in ``workers`` local processes; 0 when all of them succeed.

    ``argv`` is this process's own command line after the program name (``sys.argv[1:]``).
    """
    argv = list(argv)
    if "train" not in argv or not any(
        a == "--parallel" or a.startswith("--parallel=") for a in argv
    ):
        raise ParallelError(
            "--workers re-runs the mnistlab command line, which is not available here (was "
            "mnistlab called from Python?): run `torchrun --nproc-per-node N -m mnistlab train "
            "--parallel MODE ...` instead"
        )
    if workers < 1:
        raise ParallelError(f"--workers must be at least 1; got {workers}")
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    main = main_local_rank(mode, workers)
    own_logs = log_dir is None
    logs = Path(log_dir or tempfile.mkdtemp(prefix="mnistlab-workers-"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default, without its warning
    # The main worker's lines reach the console as they are (no "[default0]:" prefix, so
    # --json still ends with a JSON line): the prefix template is the role, and the role is empty.
    os.environ.setdefault("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", "${role_name}")
    args = torchrun.parse_args(
        [
            "--standalone",
            f"--nproc-per-node={workers}",
            "--role=",
            "--tee=3",
            f"--log-dir={logs}",
            f"--local-ranks-filter={main}",
            "--monitor-interval=0.5",
            "--module",
            "mnistlab",
            *argv,
        ]
    )
    try:
        with _quiet_torchrun():
            torchrun.run(args)
    except SignalException as exc:  # Ctrl-C or SIGTERM: the workers stop at a step and save
        raise ParallelError(
            f"the workers were stopped by signal {exc.sigval.name}; a run with "
            "checkpoints goes on with --resume RUN_DIR"
        ) from None
    except ChildFailedError as exc:
        rank, message = root_cause(exc, logs)
        raise ParallelError(
            f"worker rank {rank} of {workers} failed: {message}; the other "
            f"workers were stopped (all workers' output: {logs})"
        ) from None
    if own_logs:
        shutil.rmtree(logs, ignore_errors=True)
    return 0


@contextlib.contextmanager
def _quiet_torchrun() -> Iterator[None]:
    """torchrun logs every start and stop; we print one line of our own when it matters."""
    logger = logging.getLogger("torch.distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def root_cause(exc: BaseException, logs: Path) -> tuple[int, str]:
    """The failed worker that started it, and its reason in one line."""
    failures = getattr(exc, "failures", {}) or {}
    found: list[tuple[int, int, str, bool]] = []  # (rank, exit code, reason, knock-on)
    for rank, failure in sorted(failures.items()):
        code = int(getattr(failure, "exitcode", 1))
        reason = _reason_from_log(logs, int(getattr(failure, "local_rank", rank)))
        if code < 0:
            reason = reason or f"killed by signal {-code}"
        elif code == HANG_EXIT_CODE and not reason:
            reason = "stalled in a collective"
        reason = reason or f"exit status {code}"
        knock_on = code < 0 or bool(_KNOCK_ON.search(reason))
        found.append((rank, code, reason, knock_on))
    if not found:
        return -1, str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown failure"
    for rank, _code, reason, knock_on in found:  # the first worker that failed on its own
        if not knock_on:
            return rank, reason
    rank, _code, reason, _ = found[0]
    return rank, reason


def _reason_from_log(logs: Path, local_rank: int) -> str:
    """The worker's ``mnistlab: error:`` line, else the last line of its traceback."""
    attempts = sorted(
        logs.glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda p: (p.stat().st_mtime, str(p))
    )
    if not attempts:
        return ""
    try:
        lines = [ln.strip() for ln in attempts[-1].read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    for line in reversed(lines):
        if line.startswith("mnistlab: error:"):
            return line.removeprefix("mnistlab: error:").strip()
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line):
            return line
    return lines[-1] if lines else ""
