"""``mnistlab train --parallel MODE --workers N``: start N local workers through torchrun's engine.

Outside torchrun, the command re-runs itself under ``torch.distributed.run`` (the library behind
the ``torchrun`` command: standalone rendezvous on a free local port, worker monitoring, the
whole group stopped when one worker fails). Each worker runs the very same command line and, seeing
torchrun's environment, joins the group instead of launching again. These two lines are the same::

    mnistlab train --parallel data --workers 2
    torchrun --standalone --nproc-per-node 2 -m mnistlab train --parallel data

Only the main worker's output reaches the console; every worker's output is kept in a log folder.
What can be checked before any worker starts is checked here, once (``check_group``: the batch
split, the pipeline's micro-batches and stages, enough GPUs), so a bad setting is one line, not a
failed group. When a worker fails, the others are stopped within seconds and one message names the
worker and its cause, read from that worker's own error line rather than from a neighbour's
"connection closed" that merely followed it.

Ctrl-C (SIGINT), SIGTERM or SIGHUP to the launcher is passed on to the workers once; they stop
at a step, save, and the launcher exits 130, 143 or 129 like one process. A second signal while they save is
ignored (the engine kills workers that take longer than its shutdown timeout, 30 s).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from mnistlab.errors import ConfigError, ParallelError
from mnistlab.parallel.device import gpu_shortfall
from mnistlab.parallel.dist import HANG_EXIT_CODE, PeerLost, under_torchrun, write_error_file
from mnistlab.parallel.dist import KNOCK_ON as _KNOCK_ON

if TYPE_CHECKING:
    from mnistlab.config import Config


def wants_launch(mode: str) -> bool:
    """A parallel mode asked for outside torchrun: this process must start the workers."""
    return mode != "none" and not under_torchrun()


def main_local_rank(mode: str, workers: int) -> int:
    """Which worker prints: the loss-holding last stage under pipelining, else the first."""
    return workers - 1 if mode == "pipeline" else 0


def check_group(config: Config, workers: int) -> list[str]:
    """What a group of ``workers`` would fail on, said once before any of them starts.

    Returns the extra command-line arguments the workers need (``--device cpu`` when the GPUs are
    fewer than the workers and ``train.device`` is ``auto``). The strategies check the same things
    again in each worker, for runs started by ``torchrun`` itself.
    """
    from mnistlab.parallel.base import check_divisible

    p, t = config.parallel, config.train
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1; got {workers}")
    if p.mode == "data":
        check_divisible(t.batch_size, workers, "shards across workers", "--workers")
    if p.mode == "pipeline":
        check_divisible(t.batch_size, p.microbatches, "micro-batches", "--microbatches")
        stages = _stage_names(config)
        if stages is not None and workers > len(stages):
            raise ParallelError(
                f"a pipeline of {workers} stages needs a model with at least {workers} stages; "
                f"this {config.model.name} has {len(stages)} ({', '.join(stages)}): use "
                f"--workers {len(stages)} or fewer"
            )
    shortfall = gpu_shortfall(t.device, workers)
    if shortfall is None:
        return []
    if t.device != "auto":
        raise ParallelError(
            f"--workers {workers} with train.device={t.device} needs {workers} GPUs (one per "
            f"worker) and this machine has {shortfall}: use --workers {shortfall}, or --device "
            "cpu to train on the CPU (gloo)"
        )
    print(
        f"mnistlab: {workers} workers but {shortfall} GPU{'s' if shortfall != 1 else ''} "
        f"here (one each is needed): training on the CPU with gloo instead (--workers "
        f"{shortfall} would use the GPU{'s' if shortfall != 1 else ''})",
        file=sys.stderr,
    )
    return ["--device", "cpu"]


def _stage_names(config: Config) -> list[str] | None:
    """The model's stages, built on the meta device (no memory); ``None`` if that fails."""
    import torch

    from mnistlab.models import build_model

    try:
        with torch.device("meta"):
            return build_model(config.model, seed=config.train.seed).stage_names
    except Exception:  # the workers will say what is wrong with the model
        return None


def launch(argv: Sequence[str], workers: int, mode: str, *, log_dir: str | None = None) -> int:
    """Run ``mnistlab <argv>`` in ``workers`` local processes; 0 when all of them succeed, 130,
    143 or 129 when Ctrl-C, SIGTERM or SIGHUP stopped them (after they saved).

    ``argv`` is this process's own command line after the program name (``sys.argv[1:]``) plus
    whatever the workers need on top (it may lack ``--parallel`` when a resumed run's checkpoint
    supplies the mode).
    """
    argv = list(argv)
    if "train" not in argv or not any(
        a == flag or a.startswith(flag + "=") for a in argv for flag in ("--parallel", "--resume")
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
    # Ctrl-C, SIGTERM and SIGHUP are ours (_stop_once), not the engine's: its handler raises again on a
    # second signal, in the middle of its shutdown, and orphans workers that are still saving.
    os.environ["PET_SIGNALS_TO_HANDLE"] = "SIGQUIT"
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
    # A failing worker leaves its reason in its error file and this launcher prints it, once;
    # set only while the workers run, so a later torchrun from this process prints its own.
    os.environ[LAUNCHER_REPORTS] = "1"
    try:
        with _quiet_torchrun(), _stop_once(SignalException):
            torchrun.run(args)
    except SignalException as exc:  # a stop signal: the engine passed it on; workers saved
        # The main worker has said where it stopped and how to go on; nothing to add.
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, message = root_cause(exc, logs)
        raise ParallelError(
            f"worker rank {rank} of {workers} failed: {message}; the other "
            f"workers were stopped (all workers' output: {logs})"
        ) from None
    finally:
        os.environ.pop(LAUNCHER_REPORTS, None)
    if own_logs:
        shutil.rmtree(logs, ignore_errors=True)
    return 0


@contextlib.contextmanager
def _stop_once(exception: type[BaseException]) -> Iterator[None]:
    """The first SIGINT / SIGTERM / SIGHUP raises the engine's ``SignalException`` (it then sends the same
    signal to every worker and waits for them); later ones are ignored, so the workers' save is
    not cut short and no worker is left behind. After a stop they stay ignored until exit."""
    stopping: list[signal.Signals] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stopping:
            return
        stopping.append(signal.Signals(signum))
        raise exception(f"got signal {stopping[0].name}", sigval=stopping[0])  # type: ignore[call-arg]

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    try:
        previous = {s: signal.signal(s, handler) for s in watched}
    except ValueError:  # not the main thread: the engine's own handling applies
        yield
        return
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, signal.SIG_IGN if stopping else old)


@contextlib.contextmanager
def _quiet_torchrun() -> Iterator[None]:
    """torchrun logs every start and stop; we print one line of our own when it matters. Its
    loggers carry levels of their own (``LOGLEVEL``), so each is quieted, not just the parent."""
    loggers = [logging.getLogger("torch.distributed")] + [
        logger
        for name, logger in logging.root.manager.loggerDict.items()
        if name.startswith("torch.distributed.") and isinstance(logger, logging.Logger)
    ]
    levels = [(logger, logger.level) for logger in loggers]
    for logger, _ in levels:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in levels:
            logger.setLevel(level)


STOP_EXIT_CODES = (129, 130, 143)
"""Exit statuses of a stop the person (or the terminal) asked for: SIGHUP, Ctrl-C, SIGTERM."""

LAUNCHER_REPORTS = "MNISTLAB_LAUNCHER_REPORTS"
"""Set by ``--workers N`` for its workers: the launcher prints a failing worker's error."""


def launcher_reports(exc: BaseException) -> bool:
    """Whether this process is a worker of ``--workers N`` whose failure ``exc`` the launcher
    will print from the error file (so the worker itself prints nothing: one message, not two)."""
    code = getattr(exc, "exit_code", None)
    return (
        os.environ.get(LAUNCHER_REPORTS) == "1"
        and bool(os.environ.get("TORCHELASTIC_ERROR_FILE"))
        and code not in STOP_EXIT_CODES
    )


def record_failure(exc: BaseException) -> None:
    """In a torchrun worker, write why it is failing to torchelastic's error file for it
    (``TORCHELASTIC_ERROR_FILE``, the file ``errors.record`` writes), for ``root_cause``. A stop
    the person asked for (Ctrl-C, SIGTERM, SIGHUP) is not a failure and writes nothing."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    code = getattr(exc, "exit_code", None)
    if not path or not isinstance(exc, Exception) or code in STOP_EXIT_CODES:
        return
    from mnistlab.errors import MnistlabError

    text = str(exc).strip()
    message = text if isinstance(exc, MnistlabError) else f"{type(exc).__name__}: {text}"
    first = message.splitlines()[0] if message else type(exc).__name__
    write_error_file(path, first, knock_on=isinstance(exc, PeerLost))


def root_cause(exc: BaseException, logs: Path) -> tuple[int, str]:
    """The failed worker that started it, and how it ended, in one line.

    A worker's reason comes from its error file (``record_failure``) when mnistlab wrote one,
    else from its log (a failure before mnistlab's code ran); a worker that a signal ended is
    named with the signal. Knock-ons never win over a cause: a worker that lost its peer (a
    broken connection, a stalled collective), or that the launcher stopped on the way out
    (SIGTERM and the like, or the stop those save and exit by), only followed another. Of the
    causes, the earliest wins."""
    failures = getattr(exc, "failures", {}) or {}
    found: list[tuple[bool, float, int, str]] = []  # (knock-on, time, rank, reason)
    for rank, failure in sorted(failures.items()):
        code = int(getattr(failure, "exitcode", 1))
        data = getattr(failure, "error_file_data", None)
        ours = data.get("mnistlab") if isinstance(data, dict) else None
        local_rank = int(getattr(failure, "local_rank", rank))
        flagged = False
        if isinstance(ours, dict) and ours.get("message"):
            reason, when = str(ours["message"]), float(ours.get("time", 0.0))
            flagged = bool(ours.get("knock_on"))
        else:
            reason = _reason_from_log(logs, local_rank)
            when = float(getattr(failure, "timestamp", 0) or 0)
        if code < 0:
            how = f"killed by signal {-code} ({_signal_name(-code)})"
            reason = f"{how}: {reason}" if reason else how
            knock_on = -code in _STOP_SIGNALS  # the launcher stopping the survivors
        else:
            if code == HANG_EXIT_CODE and not reason:
                reason = "stalled in a collective"
            reason = reason or f"exit status {code}"
            knock_on = (
                flagged
                or code in STOP_EXIT_CODES
                or code == HANG_EXIT_CODE
                or bool(_KNOCK_ON.search(reason))
            )
        found.append((knock_on, when, rank, reason))
    if not found:
        return -1, str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown failure"
    own = sorted(f for f in found if not f[0])
    _, _, rank, reason = own[0] if own else min(found, key=lambda f: (f[1], f[2]))
    return rank, reason


_STOP_SIGNALS = {int(signal.SIGTERM), int(signal.SIGINT), int(signal.SIGHUP)}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# Lines of a worker's log that say why it ended, when mnistlab could not say it itself.
_TELLING = re.compile(
    r"^(mnistlab: error:|Fatal Python error|terminate called|Segmentation fault|"
    r"[\w.]+(Error|Exception|Interrupt)\b)"
)


def _reason_from_log(logs: Path, local_rank: int) -> str:
    """The worker's ``mnistlab: error:`` line, else the last line that says why it ended (an
    exception, a fatal error, a C++ terminate); never some other last line (a progress bar)."""
    attempts = sorted(
        logs.glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda p: (p.stat().st_mtime, str(p))
    )
    if not attempts:
        return ""
    try:
        lines = [ln.strip() for ln in attempts[-1].read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [re.sub(r"^\[(default)?\d*\]:\s*|^\[rank\d+\]:\s*", "", ln) for ln in lines if ln]
    for line in reversed(lines):
        if line.startswith("mnistlab: error:"):
            return line.removeprefix("mnistlab: error:").strip()
    return next((ln for ln in reversed(lines) if _TELLING.match(ln)), "")
