"""The Python API (``mnistlab.train``, ``mnistlab.load``), and the README and notebook that show it:
every Python block of the README and every code cell of docs/api.ipynb runs here, as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import mnistlab
from mnistlab.errors import CheckpointError, ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("api") / "run"
    result = mnistlab.train(
        "seed-softmax", steps=300, dataset="mnist-sample", device="cpu", run_dir=folder
    )
    return result, folder


def test_train_returns_model_history_and_figure(trained):
    result, folder = trained
    assert result.test_accuracy is not None and result.test_accuracy > 0.85
    assert result.config.train.steps == 300 and result.config.preset == "seed-softmax"
    assert result.run_dir == folder and (folder / "checkpoints").is_dir()
    h = result.history
    assert h["step"] and h["step"][-1] == 300 and len(h["loss"]) == len(h["step"])
    assert h["val_step"][-1] == 300 and len(h["val_accuracy"]) == len(h["val_step"])
    assert h["val_accuracy"][-1] == pytest.approx(result.validation_accuracy)
    assert all(lr > 0 for lr in h["lr"])
    with pytest.raises(KeyError, match="val_accuracy"):  # names the columns there are
        h["validation"]
    fig = result.figure()
    assert len(fig.axes) == 3 and "test accuracy" in fig._suptitle.get_text()
    assert fig._repr_png_().startswith(b"\x89PNG")  # a notebook draws it without %matplotlib
    html = result._repr_html_()
    assert "seed-softmax" in html and "data:image/png;base64," in html
    text = repr(result)
    assert text.startswith("<mnistlab.TrainingResult seed-softmax") and len(text) < 200
    assert "\n" not in text and "confusion" not in text


def test_history_as_a_table():
    pd = pytest.importorskip("pandas")
    result = mnistlab.train(
        "seed-softmax", steps=60, log_every=10, eval_every=30, dataset="mnist-sample", device="cpu"
    )
    table = result.history.to_pandas()
    assert isinstance(table, pd.DataFrame) and table.index.name == "step"
    assert list(table.index) == [10, 20, 30, 40, 50, 60]
    assert table["val_accuracy"].notna().tolist() == [False, False, True, False, False, True]
    assert table.loc[60, "loss"] == pytest.approx(result.history["loss"][-1])


def test_evaluate_save_and_export(trained, tmp_path, sample_splits):
    result, folder = trained
    ev = mnistlab.evaluate(result.model)
    assert ev.split == "test" and ev.dataset == "mnist-sample" and ev.count == 1000
    assert ev.accuracy == pytest.approx(result.test_accuracy, abs=1e-9)
    assert set(ev.per_class) == {str(i) for i in range(10)}
    assert ev.confusion.shape == (10, 10) and ev.confusion.sum() == 1000
    assert np.trace(ev.confusion) / 1000 == pytest.approx(ev.accuracy)
    assert mnistlab.evaluate(folder, "validation").count == 500  # a run folder works too
    assert mnistlab.evaluate(result).accuracy == ev.accuracy  # and what train returned
    fig = ev.plot()
    assert fig._repr_png_().startswith(b"\x89PNG") and "confusion" in ev._repr_html_() + "confusion"
    assert "%" in repr(ev) and len(repr(ev)) < 120
    with pytest.raises(ConfigError, match="split"):
        mnistlab.evaluate(result.model, "tset")

    saved = result.model.save(tmp_path / "softmax.pt")
    again = mnistlab.load(saved)
    digits = sample_splits.test.images[:50].numpy()
    np.testing.assert_array_equal(again.probabilities(digits), result.model.probabilities(digits))
    assert again.info["steps"] == 300
    with pytest.raises(CheckpointError, match="exists"):
        result.model.save(saved)
    result.model.save(saved, overwrite=True)

    exported = result.model.export(tmp_path / "softmax.safetensors")
    from safetensors.torch import load_file

    weights = load_file(exported)
    assert weights["logits.weight"].shape == (10, 784)
    with pytest.raises(CheckpointError, match="format"):
        result.model.export(tmp_path / "softmax.bin")


def test_a_saved_model_resumes_exactly(tmp_path):
    """``Model.save`` writes the whole training state: training on from it is the same run."""
    common = {"dataset": "mnist-sample", "device": "cpu", "threads": 1}
    whole = mnistlab.train("seed-softmax", steps=40, **common)
    half = mnistlab.train("seed-softmax", steps=20, **common)
    file = half.model.save(tmp_path / "half.pt")
    on = mnistlab.train("seed-softmax", resume=file, steps=40, **common)
    for name, tensor in whole.model.module.state_dict().items():
        assert torch.equal(tensor, on.model.module.state_dict()[name]), name


def test_no_route_overwrites_another_run(tmp_path):
    """The API claims its run folder like the command line: another run's folder is refused
    (nothing of it changes), ``overwrite=True`` replaces it, ``resume=`` continues it."""
    run = tmp_path / "run"
    common = {"dataset": "mnist-sample", "device": "cpu", "threads": 1, "eval_every": 10}
    mnistlab.train("seed-softmax", steps=30, checkpoint__every=10, run_dir=run, **common)
    before = {p.name: p.read_bytes() for p in sorted((run / "checkpoints").iterdir())}
    config_before = (run / "config.toml").read_text()
    metrics_before = (run / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds another run"):
        mnistlab.train("seed-softmax", steps=5, run_dir=run, **common)
    assert {p.name: p.read_bytes() for p in sorted((run / "checkpoints").iterdir())} == before
    assert (run / "config.toml").read_text() == config_before
    assert (run / "metrics.jsonl").read_text() == metrics_before

    goes_on = mnistlab.train("seed-softmax", resume=run, steps=40, **common)
    assert goes_on.run_dir == run and goes_on.result.steps == 40

    other = tmp_path / "other"
    mnistlab.train("seed-softmax", steps=10, run_dir=other, **common)
    step = sorted((run / "checkpoints").glob("step-*.pt"))[0]
    with pytest.raises(ConfigError, match="holds a different run"):
        mnistlab.train("seed-softmax", resume=step, steps=50, run_dir=other, **common)

    fresh = mnistlab.train("seed-softmax", steps=5, run_dir=run, overwrite=True, **common)
    assert fresh.result.steps == 5
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*.pt")) == ["step-000005.pt"]


def test_load_reads_what_train_trained(trained, sample_splits):
    result, folder = trained
    model = mnistlab.load(folder)
    assert model.info["steps"] == 300 and model.info["dataset"] == "mnist-sample"
    assert model.info["test_accuracy"] == pytest.approx(result.test_accuracy)
    assert "seed-softmax" in repr(model) and model.class_names == [str(i) for i in range(10)]
    digits = sample_splits.test.images[:200]
    loaded = model.probabilities(digits.reshape(-1, 28, 28).numpy())
    fresh = result.model.probabilities(digits.numpy())  # N x 784 works too
    np.testing.assert_allclose(loaded, fresh, atol=1e-5)
    assert loaded.shape == (200, 10)
    np.testing.assert_allclose(loaded.sum(axis=1), 1.0, atol=1e-5)
    accuracy = (loaded.argmax(1) == sample_splits.test.labels[:200].numpy()).mean()
    assert accuracy == pytest.approx(result.test_accuracy, abs=0.08)


def test_a_batch_norm_model_comes_back_with_its_statistics(tmp_path, sample_splits):
    """The cnn's running statistics travel with the model ``train`` returns and ``load`` reads:
    both predict what training evaluated."""
    result = mnistlab.train(
        "speedrun",
        steps=40,
        warmup_steps=4,
        batch_size=64,
        dataset="mnist-sample",
        device="cpu",
        run_dir=tmp_path / "run",
    )
    digits = sample_splits.test.images
    fresh = result.model.probabilities(digits.numpy())
    loaded = mnistlab.load(tmp_path / "run").probabilities(digits.numpy())
    np.testing.assert_allclose(loaded, fresh, atol=1e-6)
    accuracy = (fresh.argmax(1) == sample_splits.test.labels.numpy()).mean()
    assert accuracy == pytest.approx(result.test_accuracy, abs=1e-9)


def test_predict_takes_arrays_images_paths_and_tensors(trained, sample_splits, tmp_path):
    from PIL import Image

    model = trained[0].model
    digit = sample_splits.test.images[0].reshape(28, 28)
    label = int(sample_splits.test.labels[0])
    as_uint8 = (digit.numpy() * 255).astype(np.uint8)
    # the same digit as dark ink on a larger sheet of light paper, as a PIL image and a file
    paper = Image.fromarray(255 - as_uint8).resize((112, 112), Image.Resampling.BILINEAR)
    paper.save(tmp_path / "digit.png")
    for item in (digit, digit.numpy(), as_uint8, paper, tmp_path / "digit.png"):
        p = model.predict(item)
        assert p.label == label, type(item)
        assert p.class_name == str(label) and p.image.shape == (28, 28)
        assert p.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    several = model.predict([digit.numpy(), str(tmp_path / "digit.png")])
    assert [p.label for p in several] == [label, label]
    assert len(model.predict(sample_splits.test.images[:5].reshape(5, 28, 28))) == 5
    assert model.predict(digit.numpy()).as_dict()["label"] == label


def test_a_batch_is_never_guessed_from_its_size(trained, sample_splits):
    """An N x 784 array is N flat digits whatever N is (28 included); ``batch=`` says otherwise."""
    model = trained[0].model
    flat = sample_splits.test.images[:28].numpy()
    assert flat.shape == (28, 784)
    read = model.predict(flat)
    assert isinstance(read, list) and len(read) == 28
    assert [p.label for p in read] == [p.label for p in model.predict(list(flat))]
    assert model.probabilities(flat).shape == (28, 10)
    one = model.predict(flat[0].reshape(28, 28), batch=False)
    assert one.label == read[0].label
    assert len(model.predict(flat[:3].reshape(3, 28, 28), batch=True)) == 3
    with pytest.raises(DataError, match="batch=True"):
        model.predict("digit.png", batch=True)


def test_bad_inputs_and_settings_are_clear_errors(trained, tmp_path):
    model = trained[0].model
    with pytest.raises(DataError, match="complex"):
        model.predict(np.ones((28, 28), dtype=np.complex64))
    with pytest.raises(DataError, match="numbers"):
        model.predict(np.array([["a"] * 28] * 28))
    with pytest.raises(ConfigError, match="preset is a name"):
        mnistlab.train(5)
    with pytest.raises(ConfigError, match="not an mnistlab Callback"):
        mnistlab.train("seed-softmax", steps=5, callbacks=[5])
    with pytest.raises(ConfigError, match="one process"):
        mnistlab.train("seed-softmax", steps=5, workers=2)
    with pytest.raises(CheckpointError, match="run folder or a checkpoint"):
        mnistlab.load(5)
    with pytest.raises(DataError, match="shape"):
        model.predict(np.zeros((3, 4, 5, 6)))
    with pytest.raises(DataError, match="NaN"):
        model.predict(np.full((28, 28), np.nan))
    with pytest.raises(DataError, match="no such file"):
        model.predict(tmp_path / "missing.png")
    with pytest.raises(DataError, match="no digit"):
        model.predict(np.zeros((50, 50)))
    with pytest.raises(ConfigError, match="train.steps"):
        mnistlab.train("seed-mlp", stepz=10)
    with pytest.raises(ConfigError, match="ambiguous"):
        mnistlab.train("seed-mlp", name="mlp")
    with pytest.raises(ConfigError, match="torchrun|--parallel"):
        mnistlab.train("seed-mlp", mode="data")


def test_train_is_the_api_function_with_its_parameters_and_docs():
    """``mnistlab.train`` is ``mnistlab.api.train`` itself: ``inspect.signature`` names its
    parameters and ``help()`` shows its docstring (a callable module showed ``(*args, **kwargs)``
    and the training subpackage's docs); the training loop lives in ``mnistlab.training``."""
    import inspect
    import pydoc

    import mnistlab.api
    import mnistlab.training.loop
    from mnistlab.training import train as loop_train

    assert mnistlab.train is mnistlab.api.train
    assert inspect.isfunction(mnistlab.train)
    params = inspect.signature(mnistlab.train).parameters
    assert list(params)[0] == "preset" and params["preset"].default == "seed-mlp"
    assert {"steps", "dataset", "run_dir", "resume", "quiet", "callbacks"} <= set(params)
    assert "steps" in pydoc.render_doc(mnistlab.train)
    assert mnistlab.training.loop.train is loop_train
    for name in ("evaluate", "load", "Model"):
        assert getattr(mnistlab, name) is getattr(mnistlab.api, name)
    assert "train" in dir(mnistlab)
    with pytest.raises(AttributeError):
        mnistlab.no_such_thing  # noqa: B018


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_train_and_predict_on_cuda(sample_splits):
    result = mnistlab.train("seed-softmax", steps=200, dataset="mnist-sample", device="cuda")
    assert result.model.device.type == "cuda"
    assert result.test_accuracy > 0.85
    probs = result.model.probabilities(sample_splits.test.images[:50].numpy())  # CPU input
    assert probs.shape == (50, 10)


# -- the README and the notebook run as written ----------------------------------------------------
def _run(blocks: list[str], where: str) -> dict:
    import matplotlib

    matplotlib.use("Agg", force=True)
    namespace: dict = {"__name__": "__main__"}
    for number, code in enumerate(blocks, start=1):
        exec(compile(code, f"{where} block {number}", "exec"), namespace)
    return namespace


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) >= 2, "the README's Python API section has lost its examples"
    monkeypatch.chdir(tmp_path)
    namespace = _run(blocks, "README.md")
    assert namespace["result"].test_accuracy > 0.9
    assert namespace["p"].label == 7
    assert (tmp_path / "curves.png").stat().st_size > 10_000


@pytest.mark.slow
def test_notebook_runs(tmp_path, monkeypatch):
    path = ROOT / "docs" / "api.ipynb"
    notebook = json.loads(path.read_text(encoding="utf-8"))
    try:
        import nbformat

        nbformat.validate(nbformat.reads(json.dumps(notebook), as_version=4))
    except ImportError:
        pass
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    assert len(cells) >= 4
    monkeypatch.chdir(tmp_path)
    namespace = _run(cells, "docs/api.ipynb")
    assert namespace["accuracy"] > 0.9


def test_the_api_imports_no_command_module(tmp_path):
    """``mnistlab.train``, ``evaluate``, ``load`` and ``Model.predict`` stay below the command
    line: after all of them, no ``mnistlab.apps`` module was imported (a fresh process)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, mnistlab\n"
        "r = mnistlab.train('seed-softmax', steps=20, dataset='mnist-sample', device='cpu',"
        " run_dir='run')\n"
        "mnistlab.evaluate(r.model); m = mnistlab.load('run'); m.predict(np.eye(28))\n"
        "mnistlab.load('pretrained:cnn')\n"
        "print(sorted(k for k in sys.modules if k.startswith('mnistlab.apps')))\n"
    )
    src = str(ROOT / "src")
    env = {**__import__("os").environ, "PYTHONPATH": src}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_pretrained_model_says_what_it_scored():
    model = mnistlab.load("pretrained:cnn")
    assert model.info["test_accuracy"] == pytest.approx(0.9931)
    assert "99.31%" in repr(model)
