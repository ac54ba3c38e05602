"""A checkpoint is untrusted input: forged files (valid checksum, one defect each) through every
reader — ``load_checkpoint``, ``load_model``, ``mnistlab.load``, and the ``eval``, ``predict``,
``export`` and ``train --resume`` commands — each refused with one line that names the file."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import mnistlab
from mnistlab.apps.cli import main
from mnistlab.errors import CheckpointError
from mnistlab.io.checkpoint import load_checkpoint, load_model, save_checkpoint

from .conftest import small_config
from .forge import DEFECTS, forge, forge_state_text, forged

FIXTURE = Path(__file__).parent / "fixtures" / "v1-seed-mlp-step4.pt"
SRC = str(Path(mnistlab.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    """A valid training state: seed-mlp (model.hidden=4, momentum, EMA) at step 4."""
    return load_checkpoint(FIXTURE).state


@pytest.fixture(scope="module")
def digit(tmp_path_factory, sample_splits) -> Path:
    path = tmp_path_factory.mktemp("img") / "digit.png"
    pixels = (sample_splits.test.images[0].reshape(28, 28) * 255).to(torch.uint8).numpy()
    Image.fromarray(255 - pixels).save(path)
    return path


def one_line(text: str, path: Path) -> None:
    """A refusal as the CLI prints it: one line, naming the file, no traceback."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text and str(path) in lines[0], text
    assert lines[0].startswith("mnistlab: error: "), text


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("defect", list(DEFECTS))
def test_every_reader_refuses_a_forged_checkpoint(defect, version, state, tmp_path, digit, capsys):
    path = forge(tmp_path / "step-000004.pt", forged(state, defect), version=version)
    for read in (load_checkpoint, load_model, mnistlab.load):
        with pytest.raises(CheckpointError) as caught:
            read(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message, message
    capsys.readouterr()
    for argv in (
        ["eval", str(path)],
        ["predict", str(path), str(digit)],
        ["export", str(path), "-o", str(tmp_path / "out.safetensors")],
        ["train", "--resume", str(path)],
    ):
        assert main(argv) == CheckpointError.exit_code, argv
        one_line(capsys.readouterr().err, path)
    assert not (tmp_path / "out.safetensors").exists()


def test_a_pickled_tensor_of_zero_strides(state, tmp_path):
    """Format 1 only: 1.5 KB of pickle make a (10**6, 10**6) view of one number; it is refused
    by its count of numbers before anything reads it whole."""
    huge = copy.deepcopy(state)
    huge["model"]["logits.weight"] = torch.zeros(1).expand(10**6, 10**6)
    path = forge(tmp_path / "x.pt", huge, version=1)
    assert path.stat().st_size < 200_000
    with pytest.raises(CheckpointError, match="its weights hold 1,000,000,003,150 numbers"):
        load_model(path)


def test_the_defects_are_refused_for_what_they_are(state, tmp_path):
    """Each message says what is wrong, so a person can tell a damaged file from a forged one."""
    expect = {
        "logits weight (10**9, 0)": "its weights hold 3,150 numbers where a mlp model of its settings "
        "(model.hidden=4, 1000000000 classes) has",
        "model.hidden=[10**9]": "its weights hold 3,190 numbers where a mlp model of its settings "
        "(model.hidden=1000000000, 10 classes) has",
        "train.seed=10**30": "train.seed must be between 0 and",
        "step 'abc'": "step is 'abc', not a whole number",
        "step -5": "step is -5, outside 0..",
        "config a list": "settings must be a table of sections",
        "ema a list": "ema is a list of 2 where a table belongs",
        "a weight that is a string": "model 'logits.weight' is 'weights' where a tensor belongs",
        "NaN weights": "holds NaN or infinite values",
        "data.perm out of range": "data.perm is not an order of the 3,500 training examples",
    }
    for defect, words in expect.items():
        path = forge(tmp_path / "forged.pt", forged(state, defect))
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        assert words in str(caught.value), (defect, caught.value)


def test_the_forged_state_is_otherwise_valid(state, tmp_path):
    """The corpus's base state loads: each test above fails for its one defect only."""
    for version in (1, 2):
        path = forge(tmp_path / f"clean{version}.pt", copy.deepcopy(state), version=version)
        assert load_checkpoint(path).step == 4
        model, _ = load_model(path)
        assert model.logits.weight.shape == (10, 4)


def test_forged_weights_only_files(state, tmp_path):
    """A weights-only file is checked as a training state is, less what it does not hold: its
    one set of weights against the model its settings build, its kind and weights named."""
    from mnistlab.io.checkpoint import weights_only

    good = weights_only(copy.deepcopy(state))
    assert load_checkpoint(forge(tmp_path / "good.pt", good)).step == 4
    cases = {
        "an unknown kind": ({**good, "kind": "model"}, "its kind is 'model'"),
        "no weights named": ({k: v for k, v in good.items() if k != "weights"}, "lacks weights"),
        "weights of no kind": ({**good, "weights": "best"}, "its weights are 'best'"),
        "a moving average too": ({**good, "ema": state["ema"]}, "holds a moving average"),
        "NaN weights": (
            {
                **good,
                "model": {
                    **good["model"],
                    "logits.weight": good["model"]["logits.weight"] * math.nan,
                },
            },
            "holds NaN or infinite values",
        ),
        "a wrong shape": (
            {**good, "model": {**good["model"], "logits.weight": torch.zeros(10, 5)}},
            "numbers where a mlp model of its settings",
        ),
        "a training state without its optimizer": (
            {k: v for k, v in state.items() if k != "optimizer"},
            "lacks optimizer of a training state",
        ),
    }
    for case, (forged_state, words) in cases.items():
        path = forge(tmp_path / "forged.pt", forged_state)
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        assert words in str(caught.value), (case, caught.value)


def test_a_header_that_disagrees_with_its_data(state, tmp_path):
    """``--resume auto`` picks a run by the header alone: it must say what the data says."""
    header = {"step": 4, "config": {**state["config"], "preset": "lenet"}}
    path = forge(tmp_path / "x.pt", state, header=header)
    with pytest.raises(CheckpointError, match="header and its data hold different settings"):
        load_checkpoint(path)
    path = forge(tmp_path / "y.pt", state, header={"step": 900, "config": state["config"]})
    with pytest.raises(CheckpointError, match="header says step 900 and its data step 4"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 20_000 + "]" * 20_000,  # JSON nested 20,000 deep
        '{"step": NaN}',
        '{"$eval": "import os"}',
        '{"step": {"$tensor": "nowhere"}}',
        '"just text"',
    ],
)
def test_state_text_no_writer_makes(text, tmp_path):
    path = forge_state_text(tmp_path / "x.pt", text, {})
    with pytest.raises(CheckpointError, match=f"checkpoint {path}"):
        load_checkpoint(path)


def test_batch_norm_statistics_are_checked(sample_splits, tmp_path):
    from mnistlab.training import build_run

    config = small_config("speedrun", "model.hidden=2,2", "optim.warmup_steps=1", "train.steps=3")
    good = build_run(config, sample_splits).state_dict()
    assert load_checkpoint(save_checkpoint(tmp_path / "good.pt", good)).step == 0
    for name, value in (
        ("conv1.norm.running_var", torch.tensor([1.0, float("nan")])),
        ("conv1.norm.num_batches_tracked", torch.tensor(-4)),
        ("conv1.norm.running_mean", torch.zeros(3)),
    ):
        bad = {**good, "buffers": {**good["buffers"], name: value}}
        path = forge(tmp_path / "bad.pt", bad)
        with pytest.raises(CheckpointError, match=f"buffers {name}"):
            load_checkpoint(path)
    no_buffers = {k: v for k, v in good.items() if k != "buffers"}
    with pytest.raises(CheckpointError, match="buffers is None where a table belongs"):
        load_checkpoint(forge(tmp_path / "nob.pt", no_buffers))


def test_a_data_order_for_other_data_is_refused_on_resume(state, tmp_path, capsys, monkeypatch):
    """A consistent order of 3,499 examples passes the file's checks; resuming it on the
    3,500-example sample is one line too (not a ValueError from the batcher)."""
    other = copy.deepcopy(state)
    other["data"] = {**other["data"], "num_examples": 3499, "perm": torch.randperm(3499)}
    path = forge(tmp_path / "step-000004.pt", other)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(path), "--quiet"]) == CheckpointError.exit_code
    err = capsys.readouterr().err
    assert "covers 3499 examples, this dataset has 3500" in err and "Traceback" not in err
    assert not any((tmp_path / "runs").glob("*"))  # the refused start left no run folder


def test_a_saved_thread_count_of_another_machine_still_loads(state, tmp_path):
    """Settings chosen for the training machine (its cores) are no defect on this one."""
    big = copy.deepcopy(state)
    big["config"] = {**big["config"], "train": {**big["config"]["train"], "threads": 4096}}
    assert load_checkpoint(forge(tmp_path / "x.pt", big)).config.train.threads == 4096


@pytest.mark.slow
def test_the_commands_in_a_real_process(state, tmp_path, digit):
    """As a person runs them: one line on stderr, exit 1, never a traceback."""
    env = {**os.environ, "PYTHONPATH": SRC, "MNISTLAB_DATA": ""}
    nan = forge(tmp_path / "nan.pt", forged(state, "NaN weights"))
    abc = forge(tmp_path / "abc.pt", forged(state, "step 'abc'"))
    for argv, path in (
        (["predict", str(nan), str(digit), "--json"], nan),
        (["train", "--resume", str(abc)], abc),
        (["eval", str(nan)], nan),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "mnistlab", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, done.stderr
        assert done.stdout == ""
        one_line(done.stderr, path)


def test_an_image_of_nan_weights_is_not_predicted(state, tmp_path, digit, capsys):
    """The finding: predict printed '8 (nan%)' and exit 0; eval reported 10.00%."""
    path = forge(tmp_path / "nan.pt", forged(state, "NaN EMA shadows"))
    assert main(["predict", str(path), str(digit), "--json"]) == 1
    captured = capsys.readouterr()
    assert "nan" not in captured.out.lower()
    assert "holds NaN or infinite values" in captured.err
    assert main(["eval", str(path), "--raw-weights", "--json"]) == 1
    assert not capsys.readouterr().out


def test_a_good_checkpoint_still_evaluates(state, tmp_path, capsys):
    path = forge(tmp_path / "good.pt", copy.deepcopy(state))
    assert main(["eval", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 4 and 0 <= result["accuracy"] <= 1
    assert np.isfinite(result["accuracy"])


def test_a_model_of_other_classes_than_its_data(state, tmp_path, capsys, monkeypatch):
    """Consistent in itself (12 logits everywhere), but not for the 10 classes of its data: eval
    built a 10x10 confusion matrix from 12 classes (a traceback), resume copied 12 rows into 10."""
    twelve = copy.deepcopy(state)
    for table in (twelve["model"], twelve["ema"]["shadows"]):
        table["logits.weight"] = torch.full((12, 4), 0.1)
        table["logits.bias"] = torch.arange(12.0)
    twelve["optimizer"]["tensors"]["momentum_buffer"] |= {
        "logits.weight": torch.zeros(12, 4),
        "logits.bias": torch.zeros(12),
    }
    path = forge(tmp_path / "step-000004.pt", twelve)
    assert load_model(path)[0].logits.weight.shape == (12, 4)  # a valid 12-class model
    assert main(["eval", str(path)]) == CheckpointError.exit_code
    one_line(capsys.readouterr().err, path)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(path), "--quiet"]) == CheckpointError.exit_code
    err = capsys.readouterr().err
    assert "tells 12 classes apart but mnist-sample has 10" in err and "Traceback" not in err
    assert not any((tmp_path / "runs").glob("*"))  # the refused start left no run folder
