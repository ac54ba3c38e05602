"""Parallel modes on torch.distributed (gloo, CPU): each one computes what one process computes.

Every group is started by the real launcher (``torchrun``'s engine) as a subprocess in its own
session, with a hard timeout that kills the whole session, so no test can hang or leave orphans.
Torch takes seconds to start here, so one launch trains many cases (``tests/dist_worker.py``).

Equivalence runs in float64: float32 rounding, amplified over 200 steps where a ReLU sits at its
kink for some example, would otherwise decide the comparison (measured: 2e-4 on two hidden units,
1e-7 everywhere else); in float64 the only difference left is the order of summation, and the
modes agree to ~1e-15. A float32 run of 20 steps checks the everyday dtype too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from mnistlab.data import load_splits

from .dist_worker import run_case

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "dist_worker.py"
RTOL = 1e-5
SHORT = ["train.eval_every=100", "train.log_every=50", "train.threads=1"]
MLP200 = ["train.steps=200", *SHORT]
LENET = [
    "train.steps=20",
    "train.batch_size=20",
    "model.dropout=0",
    "train.eval_every=1000",
    "train.log_every=10",
    "train.threads=1",
]
PIPELINES = [(s, m) for s in ("gpipe", "1f1b") for m in (1, 2, 4, 5)]


def env() -> dict[str, str]:
    return os.environ | {
        "OMP_NUM_THREADS": "1",
        "MNISTLAB_DIST_TIMEOUT": "60",
        "MNISTLAB_STEP_TIMEOUT": "60",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }


def run_group(
    cmd: list[str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on timeout (or any error) kill the whole session."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=cwd or ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        assert not session_alive(proc.pid), f"{cmd[:6]} left processes behind"
    except subprocess.TimeoutExpired:
        kill_session(proc)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])}... did not finish in {timeout} s\n{err[-3000:]}")
    finally:
        kill_session(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def session_alive(pid: int, wait: float = 5.0) -> bool:
    """Whether any process of the session ``pid`` led is still running (after ``wait`` s)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.2)


def kill_session(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def torchrun(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "--monitor-interval=0.5",
        *args,
    ]


def launch_cases(cases: list[dict[str, Any]], nproc: int, out: Path, timeout: float) -> Path:
    (out / "cases.json").write_text(json.dumps(cases))
    done = run_group(
        torchrun(nproc, str(WORKER), "--cases", str(out / "cases.json"), "--out", str(out)), timeout
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def max_rel(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """Largest ``max|a - b| / max|b|`` over the named tensors (they must have the same names)."""
    assert got.keys() == ref.keys()
    return max(
        float((got[n].double() - ref[n].double()).abs().max() / ref[n].double().abs().max())
        for n in ref
    )


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=False)


# -- one launch of two workers trains every two-worker case -------------------------------------
def two_worker_cases(base100: Path) -> list[dict[str, Any]]:
    f64 = {"dtype": "float64"}
    cases: list[dict[str, Any]] = [
        {"name": "data2", "mode": "data", "overrides": MLP200, **f64},
        {"name": "tensor2", "mode": "tensor", "overrides": MLP200, **f64},
        *(
            {
                "name": f"pipe_{s}_{m}",
                "mode": "pipeline",
                "schedule": s,
                "microbatches": m,
                "overrides": MLP200,
                **f64,
            }
            for s, m in PIPELINES
        ),
        {
            "name": "pipe100",
            "mode": "pipeline",
            "microbatches": 2,
            "overrides": ["train.steps=100", *SHORT],
            **f64,
        },
        {
            "name": "resumed_in_pipeline",
            "mode": "pipeline",
            "schedule": "1f1b",
            "microbatches": 4,
            "overrides": MLP200,
            "resume": str(base100),
            **f64,
        },
        *(
            {"name": f"{m}_f32", "mode": m, "overrides": ["train.steps=20", *SHORT]}
            for m in ("data", "tensor", "pipeline")
        ),
        *(
            {
                "name": f"lenet_{m}",
                "preset": "lenet",
                "mode": m,
                "microbatches": 2,
                "schedule": "1f1b",
                "overrides": LENET,
                **f64,
            }
            for m in ("data", "tensor", "pipeline")
        ),
        {
            "name": "async",
            "mode": "async",
            "overrides": [
                "train.steps=1000",
                "train.eval_every=250",
                "train.log_every=50",
                "train.threads=1",
            ],
        },
        {
            "name": "bad_microbatches",
            "mode": "pipeline",
            "microbatches": 3,
            "overrides": ["train.steps=10"],
        },
        {
            "name": "bad_batch",
            "mode": "data",
            "overrides": ["train.steps=10", "train.batch_size=99"],
        },
    ]
    return cases


@pytest.fixture(scope="module")
def data():
    return load_splits("mnist-sample")


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory):
    """One-process runs, computed once each: ``baseline(case) -> state``."""
    out = tmp_path_factory.mktemp("baseline")
    cache: dict[str, dict[str, Any]] = {}

    def get(case: dict[str, Any]) -> dict[str, Any]:
        key = json.dumps(
            [
                case.get("preset", "seed-mlp"),
                case["overrides"],
                case.get("dtype", "float32"),
                case.get("resume"),
            ]
        )
        if key not in cache:
            name = f"base{len(cache)}"
            run_case({**case, "name": name, "mode": "none"}, data, out)
            cache[key] = load(out / f"{name}.pt")
        return cache[key]

    return get


@pytest.fixture(scope="module")
def base100(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base100")
    run_case(
        {
            "name": "base100",
            "mode": "none",
            "overrides": ["train.steps=100", *SHORT],
            "dtype": "float64",
        },
        data,
        out,
    )
    return out / "base100.pt"


@pytest.fixture(scope="module")
def two(tmp_path_factory, base100) -> tuple[Path, dict[str, dict[str, Any]]]:
    out = tmp_path_factory.mktemp("two")
    cases = two_worker_cases(base100)
    launch_cases(cases, 2, out, timeout=420)
    return out, {c["name"]: c for c in cases}


def assert_equivalent(got: dict[str, Any], ref: dict[str, Any], what: str) -> None:
    params, shadows = (
        max_rel(got["model"], ref["model"]),
        max_rel(got["ema"]["shadows"], ref["ema"]["shadows"]),
    )
    print(f"{what}: max relative difference: parameters {params:.2e}, EMA shadows {shadows:.2e}")
    assert params <= RTOL and shadows <= RTOL, (what, params, shadows)
    assert got["step"] == ref["step"] and got["ema"]["num_updates"] == ref["ema"]["num_updates"]
    assert got["last_loss"] == pytest.approx(ref["last_loss"], rel=1e-5)


# -- equivalence ----------------------------------------------------------------------------------
@pytest.mark.timeout(480)
@pytest.mark.parametrize(
    "name",
    [
        "data2",
        "tensor2",
        *(f"pipe_{s}_{m}" for s, m in PIPELINES),
        "data_f32",
        "tensor_f32",
        "pipeline_f32",
        "lenet_data",
        "lenet_tensor",
        "lenet_pipeline",
    ],
)
def test_mode_equals_one_process(two, baseline, name):
    out, cases = two
    assert_equivalent(load(out / f"{name}.pt"), baseline(cases[name]), name)


@pytest.mark.timeout(300)
def test_data_parallel_four_workers_equals_one_process(tmp_path, baseline):
    case = {"name": "data4", "mode": "data", "overrides": MLP200, "dtype": "float64"}
    launch_cases([case], 4, tmp_path, timeout=280)
    assert_equivalent(load(tmp_path / "data4.pt"), baseline(case), "data4")


@pytest.mark.timeout(480)
def test_async_reaches_one_process_accuracy(two, baseline):
    out, cases = two
    got, ref = load(out / "async.pt"), baseline({**cases["async"], "mode": "none"})
    acc, ref_acc = got["metrics"]["validation_accuracy"], ref["metrics"]["validation_accuracy"]
    print(f"async: validation accuracy {acc:.4f} vs one process {ref_acc:.4f}")
    assert got["step"] == 500  # each of 2 workers did half of the 1,000 updates
    assert abs(acc - ref_acc) <= 0.01


@pytest.mark.timeout(480)
def test_checkpoints_move_between_modes(two, baseline, data, tmp_path):
    """One process -> pipeline (resume at step 100) and pipeline -> one process, both ending
    where an uninterrupted one-process run ends; optimizer state and data order included."""
    out, cases = two
    ref = baseline(cases["data2"])  # the one-process 200-step run (float64)
    assert_equivalent(load(out / "resumed_in_pipeline.pt"), ref, "one process -> pipeline")
    run_case(
        {
            "name": "back",
            "mode": "none",
            "overrides": MLP200,
            "dtype": "float64",
            "resume": str(out / "pipe100.pt"),
        },
        data,
        tmp_path,
    )
    assert_equivalent(load(tmp_path / "back.pt"), ref, "pipeline -> one process")


@pytest.mark.timeout(480)
def test_indivisible_batches_are_clear_errors(two):
    out, _ = two
    micro = (out / "bad_microbatches.err").read_text()
    assert "cannot be split into 3 equal micro-batches" in micro and "--microbatches" in micro
    batch = (out / "bad_batch.err").read_text()
    assert "batch of 99 cannot be split into 2" in batch and "workers" in batch


# -- launch ---------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_nodes(node_args: list[list[str]], timeout: float) -> list[subprocess.CompletedProcess]:
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on 127.0.0.1."""
    port = free_port()
    procs = []
    for rank, extra in enumerate(node_args):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node-rank={rank}",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=mnistlab-test",
            "--monitor-interval=0.5",
            "-m",
            "mnistlab",
            *extra,
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env(),
                cwd=ROOT,
                start_new_session=True,
            )
        )
    results = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        for p in procs:
            assert not session_alive(p.pid), "a node left processes behind"
    except subprocess.TimeoutExpired:
        pytest.fail(f"the two-node group did not finish in {timeout} s")
    finally:
        for p in procs:
            kill_session(p)
    return results


def train_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--dataset",
        "mnist-sample",
        "--quiet",
        "--json",
        "--no-tensorboard",
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        "train.threads=1",
        *extra,
    ]


@pytest.mark.timeout(240)
def test_two_node_torchrun_launch(tmp_path):
    args = train_args(
        tmp_path, "--parallel", "data", "--set", "train.steps=300", "--set", "train.eval_every=150"
    )
    node0, node1 = two_nodes([args, args], timeout=220)
    assert node0.returncode == 0 and node1.returncode == 0, (
        node0.stderr[-3000:] + node1.stderr[-3000:]
    )
    summary = json.loads(node0.stdout.strip().splitlines()[-1])  # rank 0 alone prints
    assert summary["steps"] == 300 and summary["test_accuracy"] > 0.85
    assert not node1.stdout.strip()


# -- faults ---------------------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_missing_data_on_one_node_stops_the_group(tmp_path):
    args = train_args(tmp_path, "--parallel", "data", "--set", "train.steps=2000")
    missing = [
        *args,
        "--data-dir",
        str(tmp_path / "no-such-folder"),
        "--set",
        "data.download=false",
    ]
    missing[missing.index("mnist-sample")] = "mnist"
    began = time.monotonic()
    node0, node1 = two_nodes([args, missing], timeout=150)  # a hang fails on the timeout
    took = time.monotonic() - began
    assert node0.returncode != 0 and node1.returncode != 0
    assert "no-such-folder" in node1.stderr and "mnistlab: error:" in node1.stderr
    assert re.search(r"rank\s*:\s*1\b", node1.stderr), node1.stderr[-2000:]  # torchrun's summary
    print(f"group stopped {took:.1f} s after the start (start-up included)")


@pytest.mark.timeout(180)
def test_diverging_worker_stops_the_group_with_one_message(tmp_path):
    began = time.monotonic()
    done = run_group(
        [
            sys.executable,
            "-m",
            "mnistlab",
            *train_args(
                tmp_path,
                "--parallel",
                "pipeline",
                "--workers",
                "2",
                "--set",
                "optim.lr=1e12",
                "--set",
                "train.steps=400",
                "--set",
                "train.log_every=10",
            ),
        ],
        timeout=150,
    )
    took = time.monotonic() - began
    assert done.returncode != 0
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("mnistlab: error:")]
    assert len(errors) == 1, done.stderr[-3000:]  # the launcher's, not the worker's as well
    assert "worker rank" in errors[0] and "of 2 failed" in errors[0] and "diverged" in errors[0]
    print(f"{errors[0]} ({took:.1f} s including start-up)")


# -- a killed worker under torchrun --max-restarts 1 ------------------------------------------------
def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.timeout(300)
def test_killed_worker_resumes_to_the_same_parameters(tmp_path):
    from mnistlab.io.checkpoint import load_checkpoint

    def command(run: Path, *extra: str) -> list[str]:
        return torchrun(
            2,
            *extra,
            "-m",
            "mnistlab",
            "train",
            "--dataset",
            "mnist-sample",
            "--parallel",
            "data",
            "--quiet",
            "--no-tensorboard",
            "--run-dir",
            str(run),
            "--checkpoint-every",
            "100",
            "--resume",
            "auto",
            "--set",
            "train.steps=600",
            "--set",
            "train.threads=1",
        )

    whole = run_group(command(tmp_path / "whole"), timeout=120)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        command(killed, "--max-restarts=1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (killed / "checkpoints" / "step-000200.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint at 200"
            time.sleep(0.05)
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)
        _, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, err[-3000:]
        assert "resuming from" in err
        assert not session_alive(proc.pid)
    finally:
        kill_session(proc)
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "step-000600.pt").state
    b = load_checkpoint(killed / "checkpoints" / "step-000600.pt").state
    for part in ("model",):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), name
    for name, tensor in a["ema"]["shadows"].items():
        assert torch.equal(tensor, b["ema"]["shadows"][name]), name
