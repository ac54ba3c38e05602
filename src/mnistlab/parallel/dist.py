"""The process group every parallel mode runs on, and what all distributed strategies share.

``torchrun`` (or ``mnistlab train --workers N``, which calls it) starts the processes and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``init_group`` reads
them, picks the backend from the device (NCCL for CUDA, gloo for the CPU) and sets timeouts, so
one command scales from a laptop to many machines::

    torchrun --nproc-per-node 2 -m mnistlab train --parallel data
    torchrun --nnodes 2 --node-rank 0 --rdzv-endpoint HOST:29400 -m mnistlab train --parallel data

A group must never hang: collectives fail after ``MNISTLAB_DIST_TIMEOUT`` seconds (default 300),
and sections that can stall without an error (gloo's batched send/receive under pipelining is
known to) run under a ``Watchdog`` that stops the process, so torchrun stops the whole group.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mnistlab.errors import MnistlabError, ParallelError
from mnistlab.parallel.base import Strategy
from mnistlab.parallel.device import resolve_device

TIMEOUT_ENV = "MNISTLAB_DIST_TIMEOUT"
KNOCK_ON = re.compile(
    r"connection (closed|reset)|broken pipe|socket|peer|timed out|"
    r"DistBackendError|DistNetworkError|NCCL|gloo",
    re.IGNORECASE,
)
"""What a failure says when it happened *because a peer had already gone*, not why the group
failed: gloo and NCCL raise plain ``RuntimeError``s, so their words are all there is to go on."""
STEP_TIMEOUT_ENV = "MNISTLAB_STEP_TIMEOUT"
HANG_EXIT_CODE = 3


def under_torchrun() -> bool:
    """True in a process that torchrun (or any launcher that sets the env:// variables) started."""
    env = os.environ
    return "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env)


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ParallelError(
            f"{name}={raw!r} is not a number of seconds (e.g. {name}=120)"
        ) from None
    if value <= 0:
        raise ParallelError(f"{name} must be a positive number of seconds; got {raw}")
    return value


class PeerLost(ParallelError):
    """A collective failed because another rank went away: that rank's failure is the news,
    and this one is said in one line (the launcher names the rank that started it)."""


@dataclass(frozen=True)
class GroupInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str
    device: torch.device


_OWNED = False  # whether this module created the default group (and so must destroy it)


def init_group(device: str = "auto") -> GroupInfo:
    """Join (or reuse) the default process group described by torchrun's environment.

    ``device`` is ``train.device``: ``auto`` takes this process's GPU (``LOCAL_RANK``) when CUDA is
    available and there is one for every local rank, else the CPU (saying so once). Backend: NCCL
    for CUDA, gloo for the CPU.
    """
    global _OWNED
    env = os.environ
    if not dist.is_available():
        raise ParallelError("this torch build has no torch.distributed; parallel modes need it")
    if not dist.is_initialized() and not under_torchrun():
        raise ParallelError(
            "a parallel mode needs processes started by torchrun: use `mnistlab train --parallel "
            "MODE --workers N`, or `torchrun --nproc-per-node N -m mnistlab train --parallel MODE`"
        )
    stop_with_parent()
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    place = resolve_device(device, local_rank=local_rank, local_world=local_world)
    if place.type == "cuda":
        torch.cuda.set_device(place)
        place = torch.device("cuda", torch.cuda.current_device())
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=_seconds(TIMEOUT_ENV, 300.0))
        backend = "nccl" if place.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {
            "backend": backend,
            "timeout": timeout,
            "rank": int(env["RANK"]),
            "world_size": int(env["WORLD_SIZE"]),
        }
        if place.type == "cuda":
            kwargs["device_id"] = place
        _import_before_the_group()
        try:
            dist.init_process_group(store=_attempt_store(timeout), **kwargs)
        except Exception as exc:  # a rendezvous that cannot be reached, a port in use, ...
            raise ParallelError(
                f"cannot join the process group (MASTER_ADDR={env.get('MASTER_ADDR')}, "
                f"MASTER_PORT={env.get('MASTER_PORT')}): {exc}; check that every node uses the "
                "same --rdzv-endpoint and that the port is open"
            ) from None
        _OWNED = True
        atexit.register(destroy_group)
    return GroupInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(dist.get_world_size()))),
        backend=str(dist.get_backend()),
        device=place,
    )


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def stop_with_parent() -> None:
    """A worker stops when its launcher dies, even by ``kill -9`` (which it cannot pass on).

    On Linux the kernel is asked (``prctl(PR_SET_PDEATHSIG, SIGTERM)``) to send this process
    SIGTERM when its parent (the launcher, or torchrun's agent) ends: the loop then stops at the
    next boundary and saves, as for any SIGTERM, instead of training on with nobody to report
    to. A parent that ended while the request was made leaves the worker adopted already: it
    stops the same way. Elsewhere nothing is done."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import ctypes.util

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    # Orphaned between the two calls: the request came too late to fire. (The parent's pid is
    # compared, never tested against 1: torchrun is PID 1 itself in many a container.)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _import_before_the_group() -> None:
    """Import, while no group exists, the torch module that would otherwise keep one alive.

    ``torch.distributed.nn.functional`` declares its functions with ``group=group.WORLD`` as a
    default argument, evaluated when the module is first imported. DDP imports it, inside the
    group; ten of its functions then hold the default group for the life of the interpreter, so
    ``destroy_process_group`` cannot free it: gloo's worker and socket threads stay alive into
    interpreter shutdown, where a C++ thread that releases the last tensor of its last work
    needs the GIL, and Python ends such a thread in the middle of a destructor:
    ``terminate called without an active exception``, SIGABRT, the abort a worker sometimes
    died of after a run. Imported here first, the defaults are ``None`` (the current group).
    """
    import torch.distributed.nn.functional  # noqa: F401


def _attempt_store(timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store, with keys private to this restart of the group.

    torchrun keeps one store for all restarts (``--max-restarts``); without a prefix per attempt,
    a restarted worker can read a dead worker's address left by the previous attempt and fail to
    connect. ``TORCHELASTIC_RESTART_COUNT`` names the attempt.
    """
    env = os.environ
    agent_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        host_name=env.get("MASTER_ADDR", "127.0.0.1"),
        port=int(env.get("MASTER_PORT", "29500")),
        world_size=int(env["WORLD_SIZE"]),
        is_master=not agent_store and env["RANK"] == "0",
        timeout=timeout,
        multi_tenant=not agent_store,
    )
    return dist.PrefixStore(f"mnistlab/attempt-{env.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def destroy_group() -> None:
    """Tear down the group this module created (idempotent; registered with ``atexit``)."""
    global _OWNED
    if _OWNED and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    _OWNED = False


def decorrelate_dropout(rank: int) -> None:
    """Give each rank its own random stream (rank 0 keeps the one-process one).

    Every rank was seeded alike so the models start equal; left so, dropout would draw the
    same mask on every rank for different rows or units, correlating what should be independent.
    (A resumed run restores the main rank's stream on every rank; the masks then coincide.)
    """
    if rank:
        torch.manual_seed(torch.initial_seed() + rank)


class Watchdog:
    """Stops this process when a guarded section runs past its deadline.

    A hang inside a C++ collective cannot be interrupted from Python; a daemon thread that
    checks the deadline once a second and calls ``os._exit`` can. torchrun then sees a failed
    worker and stops the others, so the whole group ends with one message instead of hanging.
    """

    def __init__(self, rank: int, seconds: float | None = None):
        self.rank = rank
        self.seconds = seconds if seconds is not None else _seconds(STEP_TIMEOUT_ENV, 300.0)
        self._deadline: float | None = None
        self._what = ""
        self._thread = threading.Thread(target=self._watch, name="mnistlab-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        self._what = what
        self._deadline = time.monotonic() + self.seconds
        try:
            yield
        finally:
            self._deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.seconds / 4))
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                message = (
                    f"rank {self.rank}: {self._what} did not finish within "
                    f"{self.seconds:g} s (a peer stalled or a send/receive hung); stopping this "
                    f"worker so the group ends (raise {STEP_TIMEOUT_ENV} if steps are that slow)"
                )
                sys.stderr.write(f"mnistlab: error: {message}\n")
                sys.stderr.flush()
                error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
                if error_file:
                    write_error_file(error_file, message)
                os._exit(HANG_EXIT_CODE)


_WATCHDOG: Watchdog | None = None


def write_error_file(path: str, message: str, *, knock_on: bool = False) -> None:
    """torchelastic's error-file format, plus the time to the microsecond (its own is whole
    seconds, too coarse to tell which of two workers failed first) and whether the failure only
    followed a peer's (``knock_on``)."""
    import json
    import time
    import traceback

    now = time.time()
    data = {
        "message": {
            "message": message,
            "extraInfo": {"py_callstack": traceback.format_exc(), "timestamp": str(int(now))},
        },
        "mnistlab": {"message": message, "time": now, "knock_on": knock_on},
    }
    with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data))


def watchdog(rank: int) -> Watchdog:
    """This process's one watchdog (strategies come and go; the thread stays)."""
    global _WATCHDOG
    if _WATCHDOG is None:
        _WATCHDOG = Watchdog(rank)
    return _WATCHDOG


class DistributedStrategy(Strategy):
    """What every torch.distributed strategy shares: the group, the collectives, one writer."""

    def __init__(self, device: str = "auto"):
        info = init_group(device)
        super().__init__(info.device)
        self.info = info
        self.rank = info.rank
        self.world_size = info.world_size
        self.main_rank = 0
        self.watchdog = watchdog(info.rank)

    @property
    def is_main(self) -> bool:
        return self.rank == self.main_rank

    def reduce_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of each step's shard loss: the global batch's mean loss."""
        total = losses.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world_size

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=self.main_rank)
        return box[0]

    def all_true(self, flag: bool) -> bool:
        value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._comm_device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        """The end of a run that succeeded: every rank leaves the group together, while the
        interpreter is whole and every peer still connected.

        A barrier first (no collective is in flight anywhere after it); then this strategy lets
        go of everything that holds the group and collects the cycles among them (modules and
        their hooks), so that ``destroy_process_group`` frees the group there and then: the
        backend joins its worker threads and closes its sockets now. A group that outlives this
        call is torn down during interpreter shutdown instead, with C++ threads still running
        while Python and the libraries' globals are dismantled, and peers already gone. The
        strategy cannot train after ``close``."""
        with self.watchdog.guard("leaving the process group"):
            dist.barrier()
        self._let_go()
        gc.collect()
        destroy_group()

    def lost_peer(self, exc: BaseException) -> PeerLost | None:
        """``exc`` as one line when it is the group breaking off under this rank (a peer died:
        gloo's "Connection reset by peer" and the like), else ``None`` (a failure of its own,
        shown as it is)."""
        if isinstance(exc, MnistlabError) or not isinstance(exc, RuntimeError):
            return None
        text = str(exc).strip()
        if not KNOCK_ON.search(text):
            return None
        first = text.splitlines()[0] if text else type(exc).__name__
        return PeerLost(
            f"rank {self.rank}: the process group broke off, so another worker had stopped "
            f"({first[:200]})"
        )

    def _let_go(self) -> None:
        """Drop every object that holds the process group (DDP's reducer, a DTensor mesh, a
        pipeline stage, the optimizer over their parameters); subclasses add their own."""
        self.model = None
        self.optimizer = None

    @property
    def _comm_device(self) -> torch.device:
        """Where small control tensors live: NCCL needs them on the GPU."""
        return self.device if self.info.backend == "nccl" else torch.device("cpu")
