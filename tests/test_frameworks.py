"""benchmarks/frameworks.py: the ports' settings are mnistlab's presets, their data is mnistlab's
data, each installed framework trains a few steps (the others skip, saying how to install them),
and the TF compat.v1 port follows mnistlab step by step from the same weights and batches."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import catalog  # noqa: E402
import frameworks  # noqa: E402
import rounds  # noqa: E402
from ports.common import PROGRAMS, NextBatch, load  # noqa: E402


@pytest.mark.parametrize("program", list(PROGRAMS))
def test_each_port_runs_mnistlab_presets_settings(program):
    from mnistlab.config import resolve

    p = PROGRAMS[program]
    c = resolve(p.preset)
    assert c.model.init == p.init
    assert c.model.name == ("lenet" if p.model == "lenet" else "mlp" if p.hidden else "softmax")
    assert (p.hidden, p.init_std, p.bias_init, p.dropout) == (
        c.model.hidden,
        c.model.init_std,
        c.model.bias_init,
        c.model.dropout,
    )
    assert (p.lr, p.lr_decay, p.l2, p.ema, p.staircase) == (
        c.optim.lr,
        c.optim.lr_decay,
        c.optim.l2,
        c.optim.ema_decay,
        c.optim.staircase,
    )
    assert c.optim.name == ("momentum" if p.momentum else "sgd")
    assert p.momentum == (c.optim.momentum if p.momentum else 0.0)
    assert c.optim.decay_steps is None and c.optim.schedule == "exponential"
    assert (p.steps, p.eval_every, p.batch_size) == (
        c.train.steps,
        c.train.eval_every,
        c.train.batch_size,
    )


def test_ports_read_the_same_numbers_as_mnistlab(sample_splits):
    folder, validation = catalog.data_folder("mnist-sample", None)
    data = load(folder, validation)
    for ours, split in (
        ((data.train_x, data.train_y), sample_splits.train),
        ((data.val_x, data.val_y), sample_splits.validation),
        ((data.test_x, data.test_y), sample_splits.test),
    ):
        assert np.array_equal(ours[0], split.images.numpy())
        assert np.array_equal(ours[1], split.labels.numpy())


def test_next_batch_takes_the_rest_of_an_epoch_then_a_new_one():
    batches = NextBatch(10, 4, seed=0)
    seen = np.concatenate([batches() for _ in range(2)])
    crossing = batches()  # 2 from the first epoch, 2 from the second
    assert sorted(np.concatenate([seen, crossing[:2]])) == list(range(10))
    assert len(set(crossing[2:])) == 2


@pytest.mark.slow
@pytest.mark.parametrize("framework", catalog.FRAMEWORKS)
def test_smoke_each_framework_trains_a_few_steps(framework, tmp_path, capsys):
    why = catalog.missing(framework)
    if why:
        pytest.skip(f"{framework}: {why}")
    code = frameworks.main(
        ["--frameworks", framework, "--dataset", "mnist-sample", "--steps", "50"]
        + ["--out", str(tmp_path), "--threads", "1", "--rounds", "1"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "frameworks.json").read_text())
    rows = {r["program"]: r for r in report["rows"]}
    assert {r["round"] for r in report["rows"]} == {1}
    assert set(report["summary"]) == {"softmax", "mlp"}
    assert set(rows) == {"softmax", "mlp"}
    for program, row in rows.items():
        assert row["steps"] == 50 and row["train_seconds"] > 0
        assert row["framework"] == framework and row["version"]
        # 50 steps on the sample: softmax regression is past 75% already. Keras's moving average
        # has no warm-up, so its averaged MLP is still mostly the initial weights: only > chance.
        floor = 0.2 if (framework, program) == ("keras", "mlp") else 0.75
        assert row["test_accuracy"] > floor, row
    assert (tmp_path / "frameworks.png").stat().st_size > 1000
    assert f"{framework:<10}" in out and "x mnistlab" in out


def test_a_missing_framework_is_skipped_with_its_install_line(monkeypatch, tmp_path, capsys):
    # Hide every module the port needs, whatever this machine has installed: a fresh venv with
    # only .[dev] has neither jax nor optax, a developer's may have both.
    real = catalog.importlib.util.find_spec
    hidden = set(catalog.NEEDS["jax"])
    monkeypatch.setattr(
        catalog.importlib.util,
        "find_spec",
        lambda name, *a: None if name in hidden else real(name, *a),
    )
    code = frameworks.main(
        ["--frameworks", "jax", "--dataset", "mnist-sample", "--out", str(tmp_path)]
    )
    assert code == 0
    assert "skipped jax: jax is not installed: pip install 'mnistlab[compare]'" in (
        capsys.readouterr().out
    )
    assert json.loads((tmp_path / "frameworks.json").read_text())["skipped"]["jax"]


def test_the_gpu_column_runs_the_torch_ports_or_says_why_not(monkeypatch, tmp_path, capsys):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: torch sees no CUDA device"):
            frameworks.main(["--device", "cuda", "--dataset", "mnist-sample"])
        return
    code = frameworks.main(  # pragma: no cover - a GPU machine
        ["--frameworks", "pytorch,jax", "--device", "cuda", "--dataset", "mnist-sample"]
        + ["--steps", "50", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "skipped jax: its port runs on the CPU only" in out
    rows = json.loads((tmp_path / "frameworks.json").read_text())["rows"]
    assert {r["device"] for r in rows} == {"cuda"}


@pytest.mark.slow
def test_parity_with_tensorflow_step_by_step(tmp_path, capsys):
    why = catalog.missing("tf-v1")
    if why:
        pytest.skip(f"parity needs TensorFlow: {why}")
    code = frameworks.main(
        ["--parity", "--parity-steps", "60", "--snapshot-every", "20", "--dataset"]
        + ["mnist-sample", "--out", str(tmp_path), "--threads", "1"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    for report in json.loads((tmp_path / "parity.json").read_text()):
        assert report["pass"]
        assert report["loss"]["max_rel_diff"] < 1e-5
        assert report["lr"]["max_rel_diff"] < 1e-6
        assert report["weights"]["max_abs_diff"] < 1e-5
        assert report["test_accuracy"]["mnistlab"] == pytest.approx(
            report["test_accuracy"]["tf-v1"], abs=0.0021
        )
    assert "largest relative difference" in out


def test_rounds_alternate_their_order():
    names = ["mnistlab", "jax", "tf-v1"]
    assert [rounds.round_order(names, r) for r in range(3)] == [
        names,
        names[::-1],
        names,
    ]


def _row(framework: str, round_: int, seconds: float) -> dict:
    return {
        "framework": framework,
        "program": "mlp",
        "round": round_,
        "steps": 1000,
        "train_seconds": seconds,
        "test_accuracy": 0.97,
        "load_1min": 1.0,
    }


def test_ratios_are_taken_per_round_and_called_only_when_their_range_excludes_1():
    # The machine halves its speed in round 2: per-round ratios stay put, raw medians would not.
    rows = [_row("mnistlab", 1, 10.0), _row("jax", 1, 12.0), _row("tf-v1", 1, 9.0)]
    rows += [_row("mnistlab", 2, 20.0), _row("jax", 2, 26.0), _row("tf-v1", 2, 21.0)]
    rows += [_row("mnistlab", 3, 11.0), _row("jax", 3, 13.2), _row("tf-v1", 3, 11.0)]
    summary = rounds.summarize(rows)["mlp"]
    jax = summary["jax"]
    assert jax["ratio_per_round"] == pytest.approx([1.2, 1.3, 1.2])
    assert jax["ratio_to_mnistlab"] == pytest.approx({"median": 1.2, "min": 1.2, "max": 1.3})
    assert jax["verdict"] == "slower than mnistlab in every round"
    assert summary["tf-v1"]["verdict"] == "not separated: the range crosses 1"
    assert jax["ms_per_step"]["median"] == pytest.approx(13.2)
    assert "ratio_to_mnistlab" not in summary["mnistlab"]
    assert rounds.verdict({"median": 0.8, "min": 0.7, "max": 0.95}).startswith("faster")
    text = rounds.table(rounds.summarize(rows))
    assert "1.20 (1.20-1.30)" in text and "not separated" in text


def test_a_failed_run_leaves_its_round_out_of_the_ratios():
    rows = [_row("mnistlab", 1, 10.0), _row("jax", 1, 12.0)]
    rows += [{"framework": "mnistlab", "program": "mlp", "round": 2, "error": "killed"}]
    rows += [_row("jax", 2, 30.0)]
    jax = rounds.summarize(rows)["mlp"]["jax"]
    assert jax["ratio_per_round"] == pytest.approx([1.2])
    assert jax["rounds"] == 2


def test_the_machine_line_names_the_cpu_and_its_vector_flags():
    c = catalog.cpu()
    assert c["model_name"] and isinstance(c["vector_flags"], list)
    assert str(c["model_name"]) in catalog.cpu_line(c)
    fake = {**c, "vector_flags": ["avx2", "avx512f"], "family": "25", "model": "17"}
    assert "family 25 model 17" in catalog.cpu_line(fake)
    assert "avx2, avx512f" in catalog.cpu_line(fake)


def test_frameworks_and_parity_do_not_import_each_other():
    import ast

    def imported(name: str) -> set[str]:
        tree = ast.parse((BENCHMARKS / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
        return found

    assert "frameworks" not in imported("parity")
    assert "parity" not in imported("catalog") and "frameworks" not in imported("catalog")


def test_rounds_must_be_at_least_one():
    with pytest.raises(SystemExit, match="--rounds must be at least 1"):
        frameworks.main(["--rounds", "0", "--dataset", "mnist-sample"])


@pytest.mark.slow
def test_lenet_runs_where_it_has_a_port_and_says_where_it_has_none(tmp_path, capsys):
    why = catalog.missing("jax")
    if why:
        pytest.skip(f"jax: {why}")
    code = frameworks.main(
        ["--frameworks", "mnistlab,jax,pytorch", "--programs", "lenet", "--dataset"]
        + ["mnist-sample", "--steps", "20", "--rounds", "1", "--threads", "1"]
        + ["--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "lenet: no port for pytorch (ported: mnistlab, jax)" in out
    rows = json.loads((tmp_path / "frameworks.json").read_text())["rows"]
    assert {r["framework"] for r in rows} == {"mnistlab", "jax"}
    assert all(r["steps"] == 20 and r["test_accuracy"] > 0.2 for r in rows)
