"""How a failed parallel run is told: the worker that started it, and how it ended (a signal, an
exit status, its own error line), never a neighbour that merely lost its connection, a progress
bar line or a stop the launcher itself caused; and a worker never outlives its launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from mnistlab.parallel import launch

GLOO_RESET = (
    "RuntimeError: [/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
    "[127.0.0.1]:13954: Connection reset by peer. This is typically caused by a remote worker"
)


def error_file(tmp_path: Path, rank: int, message: str, when: float, **flags) -> dict:
    path = tmp_path / f"error-{rank}.json"
    launch.write_error_file(str(path), message, **flags)
    data = json.loads(path.read_text())
    data["mnistlab"]["time"] = when
    return data


def failure(rank: int, code: int, data: dict | None = None, timestamp: int = 0):
    return SimpleNamespace(
        exitcode=code, local_rank=rank, error_file_data=data or {}, timestamp=timestamp
    )


def worker_log(logs: Path, rank: int, *lines: str) -> None:
    folder = logs / "run-id" / "attempt_0" / str(rank)
    folder.mkdir(parents=True)
    (folder / "stderr.log").write_text("\n".join(lines) + "\n")


def test_a_killed_worker_is_named_with_its_signal_not_the_neighbour_it_cut_off(tmp_path):
    peer = error_file(tmp_path, 0, GLOO_RESET, 1.0)  # rank 0 failed first in time: a knock-on
    worker_log(tmp_path, 1, "train    0.0% 60/1,000,000 step  loss 0.6228")  # a progress bar
    failures = {0: failure(0, 1, peer), 1: failure(1, -9, timestamp=5)}
    assert launch.root_cause(SimpleNamespace(failures=failures), tmp_path) == (
        1,
        "killed by signal 9 (SIGKILL)",
    )


def test_workers_the_launcher_stopped_are_not_the_cause(tmp_path):
    stopped = error_file(tmp_path, 0, "training stopped at step 40 of 1000000", 1.0)
    worker_log(tmp_path, 2, "Fatal Python error: Aborted", "", "Current thread 0x0 (most recent)")
    failures = {
        0: failure(0, 143, stopped),  # saved and left on the launcher's SIGTERM
        1: failure(1, -15),  # ended by the launcher's SIGTERM
        2: failure(2, -6, timestamp=9),  # the one that aborted
    }
    rank, reason = launch.root_cause(SimpleNamespace(failures=failures), tmp_path)
    assert (rank, reason) == (2, "killed by signal 6 (SIGABRT): Fatal Python error: Aborted")


def test_a_worker_that_lost_its_peer_says_so_in_one_line(tmp_path, monkeypatch):
    from mnistlab.parallel.dist import DistributedStrategy, PeerLost

    strategy = DistributedStrategy.__new__(DistributedStrategy)  # no group needed to word it
    strategy.rank = 0
    lost = strategy.lost_peer(RuntimeError(GLOO_RESET.removeprefix("RuntimeError: ")))
    assert isinstance(lost, PeerLost) and "\n" not in str(lost)
    assert str(lost).startswith("rank 0: the process group broke off")
    assert strategy.lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert strategy.lost_peer(ValueError("peer")) is None
    # its error file marks it as a knock-on, whatever its words
    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    launch.record_failure(lost)
    assert json.loads(path.read_text())["mnistlab"]["knock_on"] is True


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
@pytest.mark.timeout(120)
def test_a_worker_stops_when_its_launcher_is_killed(tmp_path):
    """The launcher killed with SIGKILL cannot pass anything on: the kernel tells the worker."""
    told = tmp_path / "told"
    worker = textwrap.dedent(
        f"""
        import signal, sys, time
        from mnistlab.parallel.dist import stop_with_parent
        signal.signal(signal.SIGTERM, lambda *a: (open({str(told)!r}, "w").close(), sys.exit(0)))
        stop_with_parent()
        open({str(told)!r} + ".ready", "w").close()
        time.sleep(100)
        """
    )
    launcher = textwrap.dedent(
        f"""
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {worker!r}])
        while not os.path.exists({str(told)!r} + ".ready"):
            time.sleep(0.05)
        os.kill(os.getpid(), 9)
        """
    )
    env = os.environ | {"PYTHONPATH": str(Path(launch.__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", launcher], env=env, timeout=100)
    assert done.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 20
    while not told.exists():
        assert time.monotonic() < deadline, "the worker trained on without its launcher"
        time.sleep(0.05)
