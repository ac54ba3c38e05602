"""Runs and launching: run folders, resume of parallel runs, the checks made before any worker
starts, the sample fallback's length, damaged checkpoints under --resume auto, worker failures.

All in one process (the launcher is replaced where a test only needs to see what it would start);
the few tests that start real workers are in ``test_launch.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mnistlab.apps.cli import main
from mnistlab.config import resolve
from mnistlab.errors import ConfigError, ParallelError
from mnistlab.io.checkpoint import load_checkpoint, save_checkpoint, step_checkpoints
from mnistlab.parallel import launch
from mnistlab.session import assemble
from mnistlab.session import data as session_data
from mnistlab.session import folder as run_folder

FAST = ["--quiet", "--no-tensorboard", "--set", "train.threads=1"]


def train_args(run: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--preset",
        "seed-softmax",
        "--dataset",
        "mnist-sample",
        *FAST,
        "--run-dir",
        str(run),
        "--set",
        "train.steps=20",
        "--set",
        "train.eval_every=10",
        "--checkpoint-every",
        "10",
        *extra,
    ]


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("mnistlab: error:")]


# -- 1. run folders ----------------------------------------------------------------------------------
def test_a_folder_holding_another_run_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run)) == 0
    first = sorted(p.name for p in (run / "checkpoints").iterdir())
    capsys.readouterr()

    assert main(train_args(run, "--set", "train.steps=30")) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "already holds another run" in err
    assert "--resume" in err and "--overwrite" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == first  # untouched

    assert main(train_args(run, "--resume", str(run), "--overwrite")) == ConfigError.exit_code
    assert "pick one" in capsys.readouterr().err

    (run / "notes.txt").write_text("mine")
    assert main(train_args(run, "--overwrite", "--set", "train.steps=10")) == 0
    assert [s for s, _ in step_checkpoints(run / "checkpoints")] == [10]  # old step-20 cleared
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(ln).get("step", 0) for ln in lines) == 10
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files go

    capsys.readouterr()
    assert main(["train", *FAST, "--resume", str(run), "--set", "train.steps=20"]) == 0
    assert "resuming from" in capsys.readouterr().err


def test_an_empty_or_unrelated_folder_is_fine(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "README").write_text("plans")
    assert main(train_args(run)) == 0


LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_live_run_locks_its_folder_and_a_dead_ones_lock_does_not(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(run / run_folder.LOCK_NAME)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert main(train_args(run)) == ConfigError.exit_code
        err = capsys.readouterr().err
        assert len(error_lines(err)) == 1
        assert "in use by a training that is still running" in err and str(holder.pid) in err
        assert not (run / "config.toml").exists()
        # --resume and --overwrite do not get past a live run either
        assert main(train_args(run, "--overwrite")) == ConfigError.exit_code
    finally:
        holder.kill()
        holder.wait()
    assert (run / run_folder.LOCK_NAME).exists()  # left behind by the dead holder
    assert main(train_args(run)) == 0


def test_the_main_process_holds_the_lock_while_it_trains(tmp_path, monkeypatch):
    run = tmp_path / "run"
    seen: list[str] = []
    real = assemble.write_settings

    def probe(path, config):
        with pytest.raises(ConfigError, match="still running"):
            run_folder.check_free(path, resuming=True, overwrite=True)
        seen.append("locked")
        return real(path, config)

    monkeypatch.setattr(assemble, "write_settings", probe)
    assert main(train_args(run)) == 0
    assert seen == ["locked"]
    run_folder.check_free(run, resuming=True, overwrite=False)  # released at the end


def test_resume_into_a_folder_holding_another_run_is_refused(tmp_path, capsys):
    """``--resume A/checkpoints/step-N.pt --run-dir B``: B may be A itself or hold no run; a B
    holding a different run is refused and keeps every file as it was."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(train_args(a)) == 0
    assert main(train_args(b, "--set", "train.seed=2")) == 0
    files = {p: p.read_bytes() for p in sorted(b.rglob("*")) if p.is_file()}
    step = a / "checkpoints" / "step-000010.pt"
    capsys.readouterr()
    extend = ["--set", "train.steps=30"]
    code = main(["train", *FAST, "--resume", str(step), "--run-dir", str(b), *extend])
    assert code == ConfigError.exit_code
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "holds a different run" in err and str(a) in err
    assert {p: p.read_bytes() for p in sorted(b.rglob("*")) if p.is_file()} == files
    # its own folder, or an empty one (a copy that goes on elsewhere), are fine
    copy = tmp_path / "copy"
    assert main(["train", *FAST, "--resume", str(step), "--run-dir", str(copy), *extend]) == 0
    assert [s for s, _ in step_checkpoints(copy / "checkpoints")] == [20, 30]
    assert main(["train", *FAST, "--resume", str(step), "--run-dir", str(a), *extend]) == 0


def test_a_failed_start_leaves_no_trace(tmp_path, monkeypatch, capsys):
    """A start that fails before the run wrote anything (here: no such dataset files) leaves no
    folder holding only a lock file, in a default folder or a named one."""
    monkeypatch.chdir(tmp_path)
    missing = ["--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere")]
    assert main(["train", *FAST, *missing]) != 0
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["train", *FAST, *missing, "--run-dir", str(mine)]) != 0
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_print_config_prints_the_merged_settings_and_runs_nothing(tmp_path, capsys):
    from mnistlab.config import from_dict

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    monkey = ["--preset", "lenet", "--set", "optim.lr=0.2", "--device", "cpu"]
    assert main(["train", *monkey, "--print-config", "--run-dir", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    config = from_dict(tomllib.loads(text))
    assert config.preset == "lenet" and config.optim.lr == 0.2 and config.train.device == "cpu"
    assert not (tmp_path / "r").exists()
    run = tmp_path / "run"
    assert main(train_args(run)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--set", "train.steps=50", "--print-config"]) == 0
    resumed = from_dict(tomllib.loads(capsys.readouterr().out))
    assert resumed.preset == "seed-softmax" and resumed.train.steps == 50
    assert [s for s, _ in step_checkpoints(run / "checkpoints")] == [10, 20]


def test_default_run_folders_never_collide(tmp_path):
    first = run_folder.new_run_dir("seed-mlp", tmp_path)
    first.mkdir()
    second = run_folder.new_run_dir("seed-mlp", tmp_path)
    assert second != first and second.name.startswith(first.name)


# -- 2 and 4 and 5: what the launcher is asked to start ------------------------------------------------
@pytest.fixture
def launched(monkeypatch):
    """Replace the real launcher; record what it would have started."""
    calls: list[dict] = []

    def fake(argv, workers, mode, **_):
        calls.append({"argv": list(argv), "workers": workers, "mode": mode})
        return 0

    monkeypatch.setattr(launch, "launch", fake)
    monkeypatch.setattr(sys, "argv", ["mnistlab"])  # what launch() re-runs is our argv
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # same on GPU machines
    return calls


def parallel_checkpoint(tmp_path: Path, capsys, **parallel: object) -> Path:
    """A run folder whose checkpoint says it was trained in a parallel mode."""
    run = tmp_path / "prun"
    assert main(train_args(run)) == 0
    capsys.readouterr()
    newest = step_checkpoints(run / "checkpoints")[-1][1]
    state = load_checkpoint(newest).state
    state["config"]["parallel"].update(parallel)
    save_checkpoint(newest, state)
    return run


def test_resume_of_a_parallel_run_starts_its_workers_again(tmp_path, capsys, launched):
    run = parallel_checkpoint(tmp_path, capsys, mode="data", workers=2)
    sys.argv = ["mnistlab", "train", "--resume", str(run)]
    assert main(sys.argv[1:]) == 0
    assert launched == [{"argv": ["train", "--resume", str(run)], "workers": 2, "mode": "data"}]
    assert "resuming from" not in capsys.readouterr().err  # said once, by the main worker

    # another mode or size when asked for explicitly
    launched.clear()
    assert main(["train", "--resume", str(run), "--parallel", "async", "--workers", "4"]) == 0
    assert launched[0]["workers"] == 4 and launched[0]["mode"] == "async"

    # or one process: then no launcher at all
    launched.clear()
    assert main(["train", *FAST, "--resume", str(run), "--parallel", "none", "--workers", "1"]) == 0
    assert launched == []


def test_workers_need_a_mode_even_when_resuming_a_single_run(tmp_path, capsys, launched):
    run = tmp_path / "run"
    assert main(train_args(run)) == 0
    assert main(["train", "--resume", str(run), "--workers", "2"]) == ConfigError.exit_code
    assert "needs a parallel mode" in capsys.readouterr().err and launched == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--parallel", "data", "--workers", "64"], "batch of 100 cannot be split into 64"),
        (
            ["--parallel", "pipeline", "--workers", "2", "--microbatches", "3"],
            "cannot be split into 3 equal micro-batches",
        ),
        (["--parallel", "pipeline", "--workers", "3"], "use --workers 2 or fewer"),
        (["--parallel", "data", "--workers", "0"], "at least 1"),
    ],
)
def test_bad_group_settings_are_one_line_before_any_worker_starts(
    tmp_path, capsys, launched, flags, message
):
    began = time.monotonic()
    code = main(["train", "--dataset", "mnist-sample", "--run-dir", str(tmp_path / "r"), *flags])
    assert code != 0 and launched == []
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and message in err, err
    assert not (tmp_path / "r").exists()
    print(f"refused in {time.monotonic() - began:.2f} s")


def test_the_launcher_refuses_a_folder_holding_another_run(tmp_path, capsys, launched):
    run = tmp_path / "run"
    assert main(train_args(run)) == 0
    assert main(train_args(run, "--parallel", "data", "--workers", "2")) == ConfigError.exit_code
    assert "already holds another run" in capsys.readouterr().err and launched == []
    assert main(train_args(run, "--parallel", "data", "--workers", "2", "--overwrite")) == 0
    assert len(launched) == 1


def test_the_launcher_names_one_run_folder_for_all_workers(tmp_path, monkeypatch, launched):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--parallel", "data", "--workers", "2"]) == 0
    argv = launched[0]["argv"]
    assert argv[-2] == "--run-dir" and argv[-1].startswith("runs")


def fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_fewer_gpus_than_workers_falls_back_to_the_cpu_saying_so(monkeypatch, capsys, launched):
    fake_gpus(monkeypatch, 1)
    config = resolve("seed-mlp", None, ["parallel.mode=data"])
    assert launch.check_group(config, 2) == ["--device", "cpu"]
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "2 workers but 1 GPU" in err and "CPU with gloo" in err and "--workers 1" in err
    assert launch.check_group(config, 1) == []  # one worker, one GPU: fine
    fake_gpus(monkeypatch, 2)
    assert launch.check_group(config, 2) == []
    fake_gpus(monkeypatch, 1)
    cpu = resolve("seed-mlp", None, ["parallel.mode=data", "train.device=cpu"])
    assert launch.check_group(cpu, 2) == []
    assert not capsys.readouterr().err


def test_fewer_gpus_than_workers_with_device_cuda_gives_the_choices(monkeypatch, capsys, launched):
    fake_gpus(monkeypatch, 1)
    code = main(["train", "--parallel", "data", "--workers", "2", "--device", "cuda"])
    assert code != 0 and launched == []
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1
    assert "needs 2 GPUs" in err and "--workers 1" in err and "--device cpu" in err


def test_torchrun_workers_on_too_few_gpus_use_gloo(monkeypatch, capsys):
    from mnistlab.parallel import dist
    from mnistlab.parallel.device import gpu_shortfall

    fake_gpus(monkeypatch, 1)
    assert gpu_shortfall("auto", 2) == 1
    assert gpu_shortfall("cpu", 2) is None and gpu_shortfall("auto", 1) is None
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ParallelError, match="need 2 GPUs"):
        dist.init_group("cuda")
    seen = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(dist.dist, "init_process_group", fake_init)
    monkeypatch.setattr(dist, "_attempt_store", lambda timeout: None)
    with pytest.raises(ParallelError, match="cannot join"):
        dist.init_group("auto")
    assert seen["backend"] == "gloo"
    assert "training on the CPU with gloo" in capsys.readouterr().err


# -- 6. the sample fallback --------------------------------------------------------------------------
def test_the_sample_fallback_trains_the_presets_epochs(tmp_path, capsys):
    code = main(
        [
            "train",
            "--preset",
            "seed-softmax",
            "--set",
            "data.download=false",
            *FAST,
            "--run-dir",
            str(tmp_path / "run"),
            "--json",
        ]
    )
    assert code == 0
    out = capsys.readouterr()
    summary = json.loads(out.out.strip().splitlines()[-1])
    # 1,000 steps of 100 on MNIST's 55,000 = 1.8 epochs; on the sample's 3,500: 64 steps
    assert summary["dataset"] == "mnist-sample" and summary["steps"] == 64
    fallback = [ln for ln in out.err.splitlines() if "bundled mnist-sample" in ln]
    assert len(fallback) == 1
    assert "3,500 train / 500 validation / 1,000 test" in fallback[0]
    assert "64 steps" in fallback[0] and "1.8 epochs" in fallback[0]
    assert "4,000" not in out.err


def test_scaling_keeps_what_the_person_set():
    config = resolve("seed-mlp", None, ["train.eval_every=100"])
    scaled, said = session_data.fit_to_sample(config, 3500, 55_000)
    assert scaled.train.steps == 1909  # 30,000 x 3,500 / 55,000: 54.5 epochs either way
    assert scaled.checkpoint.every == 64 and scaled.tracking.histogram_every == 64
    assert scaled.train.eval_every == 100 and "54.5 epochs" in said
    config = resolve("seed-mlp", None, ["train.steps=20"])
    scaled, said = session_data.fit_to_sample(config, 3500, 55_000)
    assert scaled.train.steps == 20 and scaled.train.eval_every == 32 and "as set" in said


def test_a_named_dataset_keeps_the_exact_settings(tmp_path, capsys):
    config = resolve("seed-softmax", None, ["data.dataset=mnist-sample"])
    kept, _ = session_data.load_data(config, quiet=True)
    assert kept.train.steps == 1000 and kept.train.eval_every == 100
    assert "bundled" not in capsys.readouterr().err


# -- 7. --resume auto and a damaged newest checkpoint ------------------------------------------------
@pytest.mark.parametrize("how", ["auto", "folder"])
def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, capsys, how):
    run = tmp_path / "run"
    assert main(train_args(run)) == 0
    newest = run / "checkpoints" / "step-000020.pt"
    data = bytearray(newest.read_bytes())
    data[-100] ^= 0xFF
    newest.write_bytes(bytes(data))
    capsys.readouterr()
    resume = ["--resume", "auto"] if how == "auto" else ["--resume", str(run)]
    args = train_args(run, *resume, "--set", "train.steps=30", "--json")
    if how == "folder":
        args = ["train", *FAST, "--resume", str(run), "--set", "train.steps=30", "--json"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "skipping" in out.err and "step-000020.pt" in out.err and "sha256" in out.err
    assert "resuming from" in out.err and "step-000010.pt at step 10" in out.err
    assert json.loads(out.out.strip().splitlines()[-1])["steps"] == 30


def test_resume_with_no_whole_checkpoint_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run)) == 0
    for _, path in step_checkpoints(run / "checkpoints"):
        path.write_bytes(path.read_bytes()[:-10])
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) != 0
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and "no earlier checkpoint" in err


# -- 8. worker failures from torchelastic's error files ----------------------------------------------
def test_the_root_cause_comes_from_the_error_files(tmp_path, monkeypatch):
    files = {}
    for rank, (message, when) in enumerate(
        [
            ("Connection closed by peer [127.0.0.1]:1234", 1.0),  # rank 0: knock-on
            ("training diverged: the loss became nan at step 7", 2.0),  # rank 1: the cause
            ("train.steps must be positive", 3.0),  # rank 2: later
        ]
    ):
        path = tmp_path / f"error-{rank}.json"
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
        launch.write_error_file(str(path), message)
        data = json.loads(path.read_text())
        data["mnistlab"]["time"] = when
        files[rank] = SimpleNamespace(exitcode=1, local_rank=rank, error_file_data=data)
    failures = {**files, 3: SimpleNamespace(exitcode=-15, local_rank=3, error_file_data={})}
    rank, reason = launch.root_cause(SimpleNamespace(failures=failures), tmp_path)
    assert (rank, reason) == (1, "training diverged: the loss became nan at step 7")


def test_a_worker_records_its_error(tmp_path, monkeypatch):
    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    launch.record_failure(ConfigError("train.steps must be positive"))
    assert json.loads(path.read_text())["message"]["message"] == "train.steps must be positive"
    path.unlink()
    stop = ConfigError("stopped")
    stop.exit_code = 130
    launch.record_failure(stop)  # a requested stop is no failure
    launch.record_failure(KeyboardInterrupt())
    assert not path.exists()
    try:
        raise ValueError("a bug\nwith two lines")
    except ValueError as exc:
        launch.record_failure(exc)
    assert json.loads(path.read_text())["mnistlab"]["message"] == "ValueError: a bug"


def test_resume_auto_may_use_a_folder_stopped_before_its_first_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("# a run killed before its first checkpoint\n")
    assert main(train_args(run)) == ConfigError.exit_code
    assert main(train_args(run, "--resume", "auto")) == 0
    assert "starting a new one" in capsys.readouterr().err
