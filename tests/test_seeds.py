"""``mnistlab train --seeds``: seed lists, statistics, one folder per seed, refusals, Ctrl-C."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnistlab.apps.cli import main
from mnistlab.apps.seeds import describe, parse_seeds, t_quantile_975
from mnistlab.errors import ConfigError

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = [
    "--preset",
    "seed-softmax",
    "--dataset",
    "mnist-sample",
    "--set",
    "train.steps=30",
    "--set",
    "train.eval_every=10",
    "--no-tensorboard",
    "--quiet",
]


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("spec", "seeds"),
    [("1-5", [1, 2, 3, 4, 5]), ("1,3,7", [1, 3, 7]), ("1-3, 10", [1, 2, 3, 10]), ("0", [0])],
)
def test_seed_lists(spec, seeds):
    assert parse_seeds(spec) == seeds


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("1,1", "appears twice"),
        ("1-3,2", "appears twice"),
        ("5-1", "backwards"),
        ("a", "not a seed"),
        ("1,,2", "not a seed"),
        ("-3", "0 or more"),
        ("", "empty"),
        ("  ", "empty"),
        ("1-10000000000000", "more than 1000"),  # refused before the range is built
        ("1-600,700-1200", "more than 1000"),
    ],
)
def test_bad_seed_lists_are_refused(spec, words):
    with pytest.raises(ConfigError, match=words):
        parse_seeds(spec)


def test_an_empty_seed_list_on_the_command_line_trains_nothing(tmp_path, capsys):
    code = main(["train", *TINY, "--seeds", "", "--run-dir", str(tmp_path / "p")])
    assert code == ConfigError.exit_code
    assert "--seeds is empty" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_statistics_match_the_textbook():
    """Mean, sample sd and the Student t interval of 1..5: t(0.975, 4) = 2.776."""
    d = describe([1.0, 2.0, 3.0, 4.0, 5.0])
    assert d["mean"] == 3.0 and d["min"] == 1.0 and d["max"] == 5.0 and d["n"] == 5
    assert d["sd"] == pytest.approx(math.sqrt(2.5))
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)
    assert d["ci95"] == pytest.approx([3.0 - half, 3.0 + half])
    one = describe([0.9])
    assert one["mean"] == 0.9 and one["sd"] is None and one["ci95"] is None
    assert describe([])["mean"] is None


@pytest.mark.parametrize(
    ("df", "t"), [(1, 12.706), (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)]
)
def test_t_quantiles(df, t):
    assert t_quantile_975(df) == pytest.approx(t, abs=1.5e-3)


def test_seeds_train_each_seed_in_its_folder_and_report_statistics(tmp_path, capsys):
    parent = tmp_path / "five"
    assert main(["train", *TINY, "--seeds", "1,3", "--run-dir", str(parent), "--json"]) == 0
    report = last_json(capsys.readouterr().out)
    assert report["seeds_finished"] == [1, 3] and report["interrupted"] is False
    accs = [r["test_accuracy"] for r in report["runs"]]
    stats = report["statistics"]["test_accuracy"]
    assert stats["n"] == 2 and stats["mean"] == pytest.approx(sum(accs) / 2)
    assert stats["min"] == min(accs) and stats["ci95"][0] <= stats["mean"] <= stats["ci95"][1]
    assert report["statistics"]["train_seconds"]["n"] == 2
    assert (
        report["statistics"]["wall_seconds"]["min"] >= report["statistics"]["train_seconds"]["min"]
    )
    for seed in (1, 3):
        folder = parent / f"seed-{seed}"
        assert (folder / "config.toml").is_file()
        assert "seed = " + str(seed) in (folder / "config.toml").read_text()
        assert (folder / "checkpoints" / "best.pt").is_file()
    assert json.loads((parent / "seeds.json").read_text())["seeds_finished"] == [1, 3]
    # Seed 3 inside --seeds is the same run as seed 3 alone.
    assert (
        main(
            [
                "train",
                *TINY,
                "--set",
                "train.seed=3",
                "--run-dir",
                str(tmp_path / "alone"),
                "--json",
            ]
        )
        == 0
    )
    alone = last_json(capsys.readouterr().out)
    assert alone["test_accuracy"] == report["runs"][1]["test_accuracy"]


def test_seeds_print_a_table(tmp_path, capsys):
    args = [a for a in TINY if a != "--quiet"]
    assert main(["train", *args, "--seeds", "2-3", "--run-dir", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "test accuracy: mean" in out and "95% CI" in out and "Student t, n=2" in out


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--parallel", "data", "--workers", "2"], "cannot be combined with --parallel"),
        (["--resume", "auto"], "cannot --resume"),
        (["--set", "train.seed=4"], "drop --set train.seed"),
        (["--tensorboard"], "mnistlab board PARENT"),
    ],
)
def test_seeds_refuse_what_they_cannot_do(tmp_path, capsys, extra, words):
    code = main(["train", *TINY, "--seeds", "1-2", "--run-dir", str(tmp_path / "p"), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert words in err
    assert not (tmp_path / "p").exists()


def test_a_parent_holding_earlier_seeds_is_refused_unless_overwritten(tmp_path, capsys):
    parent = tmp_path / "p"
    assert main(["train", *TINY, "--seeds", "1", "--run-dir", str(parent)]) == 0
    assert main(["train", *TINY, "--seeds", "1-2", "--run-dir", str(parent)]) == 2
    assert "seed-1 already holds another run" in capsys.readouterr().err
    assert not (parent / "seed-2").exists()
    assert main(["train", *TINY, "--seeds", "1-2", "--run-dir", str(parent), "--overwrite"]) == 0


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_keeps_and_reports_the_finished_seeds(tmp_path, sig, code):
    """SIGINT (SIGTERM) while seed 2 trains: exit 130 (143), seed 1 reported (table and JSON),
    seed 2's checkpoint saved, seed 3 never started."""
    parent = tmp_path / "p"
    settings = ["--set", "train.steps=1500", "--set", "train.eval_every=10"]
    cmd = [sys.executable, "-m", "mnistlab", "train", "--preset", "seed-softmax"]
    cmd += ["--dataset", "mnist-sample", "--no-tensorboard", "--quiet", *settings]
    cmd += ["--seeds", "1-3", "--run-dir", str(parent), "--json"]
    env = {**os.environ, "PYTHONPATH": SRC, "MNISTLAB_DATA": ""}
    child = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (parent / "seed-2" / "checkpoints" / "best.pt").exists():
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.01)
        child.send_signal(sig)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == code, err
    report = last_json(out)
    assert report["interrupted"] is True
    assert report["seeds_finished"] == [1]
    assert report["statistics"]["test_accuracy"]["n"] == 1
    assert "1 of 3 seed(s) finished" in err
    assert "test accuracy: mean" in out
    assert any(p.name.startswith("step-") for p in (parent / "seed-2" / "checkpoints").iterdir())
    assert not (parent / "seed-3").exists()
    assert json.loads((parent / "seeds.json").read_text())["interrupted"] is True


def test_a_seed_that_fails_is_one_error_after_the_finished_seeds(tmp_path, capsys, monkeypatch):
    """Seed 2 diverging: seed 1 is still reported (table, JSON, seeds.json), then the error."""
    import mnistlab.training
    from mnistlab.errors import TrainingError

    real = mnistlab.training.train

    def second_diverges(config, *a, **k):
        if config.train.seed == 2:
            raise TrainingError("diverged: the loss became nan at step 7")
        return real(config, *a, **k)

    monkeypatch.setattr(mnistlab.training, "train", second_diverges)
    parent = tmp_path / "p"
    code = main(["train", *TINY, "--seeds", "1-3", "--run-dir", str(parent), "--json"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "error: diverged: the loss became nan at step 7" in err
    report = last_json(out)
    assert report["seeds_finished"] == [1] and report["interrupted"] is True
    assert report["stopped"] == "seed 2 failed"
    assert "test accuracy: mean" in out
    assert not (parent / "seed-3").exists()
