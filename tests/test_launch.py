"""`mnistlab train --workers N` with real workers (gloo on the CPU; slow): Ctrl-C and SIGTERM let
the workers save and exit like one process would (130, 143) with nothing left running, and a
parallel run resumes with `--resume RUN` alone."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mnistlab
from mnistlab.io.checkpoint import step_checkpoints

from .test_parallel import session_alive

pytestmark = pytest.mark.dist

SRC = str(Path(mnistlab.__file__).resolve().parents[1])


def env() -> dict[str, str]:
    return os.environ | {
        "OMP_NUM_THREADS": "1",
        "MNISTLAB_DIST_TIMEOUT": "60",
        "MNISTLAB_STEP_TIMEOUT": "60",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }


def logged_steps(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for ln in lines if ln.strip().endswith("}"))


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_signal_to_the_launcher_lets_the_workers_save(tmp_path, sig, code):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mnistlab",
        "train",
        "--dataset",
        "mnist-sample",
        "--parallel",
        "data",
        "--workers",
        "2",
        "--quiet",
        "--run-dir",
        str(run),
        "--checkpoint-every",
        "0",
        "--set",
        "train.steps=1000000",
        "--set",
        "train.log_every=10",
        "--set",
        "train.threads=1",
    ]
    proc = subprocess.Popen(
        cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while logged_steps(run) < 2:  # the workers are training
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        os.kill(proc.pid, sig)  # the launcher alone, as a terminal or a scheduler would
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == code, err[-3000:]
        assert "training stopped at step" in err and f"--resume {run}" in err
        assert "death signal" not in err  # torchrun's own logging stays quiet
        assert "mnistlab: error:" not in err, err[-3000:]
        saved = step_checkpoints(run / "checkpoints")
        assert saved, "no checkpoint was saved on the way out"
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert saved[-1][0] >= last.get("step", 0)
        # the workers are gone (they ran in sessions of their own)
        assert not [p for p in Path("/proc").glob("[0-9]*") if _runs_in(p, run)]
    finally:
        if proc.poll() is None or session_alive(proc.pid, 0):
            os.killpg(proc.pid, signal.SIGKILL)


def _runs_in(proc: Path, run: Path) -> bool:
    try:
        return str(run) in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@pytest.mark.timeout(240)
def test_a_parallel_run_resumes_without_its_flags(tmp_path):
    from mnistlab.io.checkpoint import load_checkpoint

    run = tmp_path / "run"
    common = ["--quiet", "--json", "--no-tensorboard", "--set", "train.threads=1"]

    def mnistlab(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "mnistlab", "train", *args, *common]
        return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=150)

    first = mnistlab(
        "--dataset", "mnist-sample", "--parallel", "data", "--workers", "2", "--run-dir",
        str(run), "--set", "train.steps=40", "--set", "train.eval_every=20",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    again = mnistlab("--resume", str(run), "--set", "train.steps=60")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("resuming from") == 1
    assert json.loads(again.stdout.strip().splitlines()[-1])["steps"] == 60
    parallel = load_checkpoint(step_checkpoints(run / "checkpoints")[-1][1]).config.parallel
    assert (parallel.mode, parallel.workers) == ("data", 2)


def _workers_of(run: Path) -> dict[int, int]:
    """``{rank: pid}`` of the worker processes training into ``run``."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if _runs_in(proc, run) and b"TORCHELASTIC_RUN_ID" in b"\0".join(environ):
            rank = next((int(v[5:]) for v in environ if v.startswith(b"RANK=")), None)
            if rank is not None:
                found[rank] = int(proc.name)
    return found


def _start_training(run: Path) -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "mnistlab", "train", "--dataset", "mnist-sample", "--parallel",
        "data", "--workers", "2", "--quiet", "--run-dir", str(run), "--checkpoint-every", "0",
        "--set", "train.steps=1000000", "--set", "train.log_every=10", "--set", "train.threads=1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 150
    while logged_steps(run) < 2 or len(_workers_of(run)) < 2:  # both workers are training
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    return proc


@pytest.mark.timeout(240)
def test_a_killed_worker_is_named_in_one_line(tmp_path):
    run = tmp_path / "run"
    proc = _start_training(run)
    try:
        os.kill(_workers_of(run)[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 1, err[-3000:]
        errors = [ln for ln in err.splitlines() if ln.startswith("mnistlab: error:")]
        assert (
            errors == [errors[0]] and "worker rank 1 of 2 failed: killed by signal 9" in errors[0]
        )
        assert "Traceback" not in err and "Connection reset" not in err, err[-3000:]
    finally:
        if proc.poll() is None or session_alive(proc.pid, 0):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.timeout(240)
def test_the_workers_stop_and_save_when_the_launcher_is_killed(tmp_path):
    run = tmp_path / "run"
    proc = _start_training(run)
    try:
        proc.kill()  # SIGKILL: the launcher can pass nothing on
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 60
        while _workers_of(run):
            assert time.monotonic() < deadline, "the workers trained on without their launcher"
            time.sleep(0.2)
        assert step_checkpoints(run / "checkpoints"), "they stopped without saving"
    finally:
        for pid in _workers_of(run).values():  # orphans, when the test fails
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
