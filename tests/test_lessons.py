"""The lessons (docs/lessons/*.ipynb) are committed executed, and still run: CI executes every one
with nbclient in a temporary folder (full MNIST when the machine has it, else the bundled sample)
and fails on any error. Also scripts/ablation.py, whose table the second lesson and the README
show."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from .conftest import FULL_MNIST

ROOT = Path(__file__).resolve().parents[1]
LESSONS = ROOT / "docs" / "lessons"
NAMES = [
    "01-softmax",
    "02-mlp-and-its-tricks",
    "03-save-resume-tensorboard",
    "04-parallel",
    "05-frameworks",
]
nbformat = pytest.importorskip("nbformat")


def _script(name: str):
    """scripts/NAME.py as a module (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        f"lessons_{name}", ROOT / "scripts" / f"{name}.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _shows_something(source: str) -> bool:
    """Whether a cell, run, must leave an output: it prints or displays, draws a figure, or ends
    on a bare expression (which Jupyter shows) without a closing ``;``."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if name in ("print", "display", "show"):
                return True
    last = tree.body[-1] if tree.body else None
    return isinstance(last, ast.Expr) and not source.rstrip().endswith(";")


def _draws(source: str) -> bool:
    """Whether a cell draws a figure: ``plt.show()``, or a last line that returns one."""
    last = source.strip().splitlines()[-1] if source.strip() else ""
    return "plt.show()" in source or last.endswith((".figure()", ".plot()"))


def check_outputs(notebook, name: str) -> None:
    """Every code cell ran, in order, without an error; every cell that prints, displays or draws
    kept its output; every figure is stored as an image."""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code, f"{name} has no code"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), f"{name}: cells not run in order: {counts}"
    images = 0
    for i, cell in enumerate(code, 1):
        where = f"{name}, code cell {i} ({cell.source.strip().splitlines()[0][:60]!r})"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{where} stored an error: {errors[0].get('evalue')}"
        if _shows_something(cell.source):
            assert cell.outputs, f"{where} prints or shows something but has no stored output"
        pngs = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        if _draws(cell.source):
            assert pngs, f"{where} draws a figure but no image is stored"
        images += len(pngs)
        for o in cell.outputs:
            text = o.get("text", "") + o.get("data", {}).get("text/plain", "")
            assert "<Figure size" not in text or pngs, f"{where} shows a figure only as text"
    assert images, f"{name} stores no figure"


def test_the_five_lessons_are_there():
    found = sorted(p.stem for p in LESSONS.glob("*.ipynb"))
    assert found == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_lesson_is_committed_with_its_outputs(name):
    notebook = nbformat.read(LESSONS / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    check_outputs(notebook, name)
    assert notebook.metadata["mnistlab"]["executed_on"]  # run_lessons.py says where it ran


def test_the_output_check_catches_a_lesson_without_outputs():
    notebook = nbformat.read(LESSONS / "01-softmax.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    with pytest.raises(AssertionError, match="no stored output"):
        check_outputs(notebook, "stripped")


def test_the_output_check_catches_a_figure_stored_as_text():
    notebook = nbformat.read(LESSONS / "01-softmax.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and _draws(cell.source):
            cell.outputs = [
                nbformat.v4.new_output(
                    "execute_result", {"text/plain": "<Figure size 640x480 with 1 Axes>"}
                )
            ]
            cell.outputs[0].execution_count = cell.execution_count
    with pytest.raises(AssertionError, match="draws a figure but no image"):
        check_outputs(notebook, "text figures")


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_each_lesson_runs_from_top_to_bottom(name):
    """Executed as scripts/run_lessons.py executes it (a fresh kernel in a temporary folder,
    this checkout's mnistlab); nbclient raises on the first cell that fails."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    run_lessons = _script("run_lessons")
    notebook, _ = run_lessons.execute(LESSONS / f"{name}.ipynb", FULL_MNIST, timeout=300)
    check_outputs(notebook, name)


# -- scripts/ablation.py ----------------------------------------------------------------------------
def _report(seeds: list[int], accuracies: list[float], dataset: str = "mnist") -> dict:
    """What ``mnistlab train --seeds ... --json`` prints, reduced to what the ablation reads."""
    runs = [
        {"seed": s, "test_accuracy": a, "validation_accuracy": a, "train_seconds": 1.0}
        for s, a in zip(seeds, accuracies, strict=True)
    ]
    return {"dataset": dataset, "runs": runs}


def test_the_ablation_table_pairs_each_variant_with_all_on_seed_by_seed():
    ablation = _script("ablation")
    results = {
        "variants": {
            "all-on": {
                "label": "all on",
                **ablation.summarise(_report([1, 2, 3], [0.98, 0.97, 0.99])),
            },
            "no-ema": {
                "label": "no ema",
                **ablation.summarise(_report([1, 2, 3], [0.97, 0.975, 0.97])),
            },
        },
        "dataset": "mnist",
        "steps_label": "30,000 steps",
        "seeds": "1-3",
        "threads": 1,
        "machine": {"cpu": "a CPU", "torch": "2.x"},
        "command": "python scripts/ablation.py",
    }
    assert ablation.paired(results["variants"]["all-on"], results["variants"]["no-ema"]) == (
        pytest.approx([0.01, -0.005, 0.02])
    )
    text = ablation.table(results)
    row = [line for line in text.splitlines() if line.startswith("| no ema")][0]
    # mean of (1.0, -0.5, 2.0) points is +0.83; sd 1.26; all on better in 2 of 3 seeds
    assert "| 97.17% ± 0.29 | +0.83 ± 1.26 pp | 2 of 3 |" in row
    assert "97.00 – 97.50%" in row and "97.00, 97.50, 97.00" in row
    assert "Command: `python scripts/ablation.py`" in text


def test_the_ablation_keeps_finished_variants_and_redoes_changed_ones(tmp_path, monkeypatch):
    ablation = _script("ablation")
    asked: list[str] = []

    def fake_run(cmd: list[str]) -> dict:
        asked.append(cmd[cmd.index("--run-dir") + 1].rsplit("/", 1)[-1])
        return _report([1, 2], [0.98, 0.97])

    monkeypatch.setattr(ablation, "run_variant", fake_run)
    out = tmp_path / "out"
    common = ["--out", str(out), "--seeds", "1-2", "--runs", str(tmp_path / "runs")]
    assert ablation.main([*common, "--variants", "all-on,no-l2"]) == 0
    assert asked == ["all-on", "no-l2"]
    stored = json.loads((out / "ablation.json").read_text())
    assert list(stored["variants"]) == ["all-on", "no-l2"]
    assert "--set optim.l2=0" in stored["commands"]["no-l2"]
    assert (out / "ablation.md").read_text() == ablation.table(stored)

    asked.clear()  # same settings: only the new variant trains, in the order asked for
    assert ablation.main([*common, "--variants", "all-on,no-ema,no-l2"]) == 0
    assert asked == ["no-ema"]
    assert list(json.loads((out / "ablation.json").read_text())["variants"]) == [
        "all-on",
        "no-ema",
        "no-l2",
    ]

    asked.clear()  # other steps: nothing stored is comparable, everything trains again
    assert ablation.main([*common, "--variants", "all-on", "--steps", "100"]) == 0
    assert asked == ["all-on"]


def test_the_ablation_refuses_an_unknown_variant(capsys):
    ablation = _script("ablation")
    with pytest.raises(SystemExit) as stop:
        ablation.main(["--variants", "all-on,no-dropout"])
    assert stop.value.code == 2
    assert "unknown variant no-dropout" in capsys.readouterr().err


def test_the_stored_ablation_is_the_full_one_and_its_table_is_generated():
    """The README's and lesson 2's table: 5 variants x 5 seeds x 30,000 steps on full MNIST,
    and ablation.md is exactly what the script renders from ablation.json."""
    ablation = _script("ablation")
    stored = json.loads((LESSONS / "ablation.json").read_text())
    assert stored["steps"] is None and stored["seeds"] == "1-5" and stored["dataset"] == "mnist"
    assert list(stored["variants"]) == ["all-on", "no-ema", "no-l2", "no-decay", "none"]
    for v in stored["variants"].values():
        assert v["seeds"] == [1, 2, 3, 4, 5] and v["dataset"] == "mnist"
    assert (LESSONS / "ablation.md").read_text() == ablation.table(stored)


@pytest.mark.slow
def test_the_ablation_script_runs_the_command_line(tmp_path):
    """End to end through ``mnistlab train --seeds``, tiny: two variants, two seeds, 20 steps."""
    import subprocess

    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "ablation.py"), "--dataset", "mnist-sample"]
    cmd += ["--steps", "20", "--seeds", "1-2", "--variants", "all-on,no-decay", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    stored = json.loads((out / "ablation.json").read_text())
    assert stored["dataset"] == "mnist-sample"
    for name in ("all-on", "no-decay"):
        v = stored["variants"][name]
        assert v["seeds"] == [1, 2] and all(0.5 < a <= 1 for a in v["test_accuracy"])
    assert "| no learning-rate decay (optim.lr_decay=1.0) |" in (out / "ablation.md").read_text()


def test_the_api_notebook_is_committed_with_its_outputs():
    """docs/api.ipynb, the Python API's walk-through, is stored executed like the lessons
    (``python scripts/run_lessons.py docs/api.ipynb --sample``); tests/test_api.py runs it."""
    notebook = nbformat.read(LESSONS.parent / "api.ipynb", as_version=4)
    nbformat.validate(notebook)
    check_outputs(notebook, "api")
    assert notebook.metadata["mnistlab"]["executed_on"]
