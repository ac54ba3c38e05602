"""TensorBoard events and metrics.jsonl, read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from mnistlab.apps.cli import main
from mnistlab.io.callbacks import Callback, Wants
from mnistlab.io.digits import misclassified_grid
from mnistlab.io.plots import read_metrics
from mnistlab.io.tracking import TrackingCallback, _graph_profile, _tensorboard_without_tensorflow
from mnistlab.models import build_model
from mnistlab.training import train

from .conftest import small_config

STEPS, LOG, EVAL, HIST = 60, 20, 30, 30
KEEP_ALL = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}


@pytest.fixture(scope="module")
def tracked(sample_splits, tmp_path_factory):
    """One short seed-mlp run with every kind of event; shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("run")
    config = small_config(
        "seed-mlp",
        f"train.steps={STEPS}",
        f"train.log_every={LOG}",
        f"train.eval_every={EVAL}",
        f"tracking.histogram_every={HIST}",
    )
    result = train(config, sample_splits, callbacks=[TrackingCallback(run_dir)])
    events = EventAccumulator(str(run_dir), size_guidance=KEEP_ALL)
    events.Reload()
    return run_dir, result, events, read_metrics(run_dir)


def scalars(events, tag):
    return {e.step: e.value for e in events.Scalars(tag)}


def test_scalars_match_metrics_jsonl(tracked):
    _, result, events, records = tracked
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged] == [20, 40, 60]
    for tag, key in [
        ("train/loss", "loss"),
        ("train/data_loss", "data_loss"),
        ("train/learning_rate", "lr"),
        ("train/ema_decay", "ema_decay"),
        ("train/loss_smoothed", "loss_smoothed"),
        ("train/batch_accuracy", "train_accuracy"),
    ]:
        values = scalars(events, tag)
        assert sorted(values) == [20, 40, 60], tag
        for r in logged:
            assert values[r["step"]] == pytest.approx(r[key], rel=1e-5, abs=1e-7), (tag, r)
    assert all(0.0 <= r["train_accuracy"] <= 1.0 for r in logged)
    assert logged[0]["loss"] > logged[-1]["loss"]  # it learns
    # the smoothed loss starts at the raw one, then lags behind it
    assert logged[0]["loss_smoothed"] == pytest.approx(logged[0]["loss"])


def test_validation_ema_and_raw(tracked):
    _, result, events, records = tracked
    ema, raw = scalars(events, "validation/accuracy"), scalars(events, "validation/accuracy_raw")
    assert sorted(ema) == sorted(raw) == [30, 60]
    evals = {r["step"]: r for r in records if "validation_accuracy" in r}
    for step in (30, 60):
        assert ema[step] == pytest.approx(evals[step]["validation_accuracy"])
        assert raw[step] == pytest.approx(evals[step]["validation_accuracy_raw"])
    assert ema[60] == pytest.approx(result.validation_accuracy)
    assert scalars(events, "test/accuracy")[60] == pytest.approx(result.test.accuracy)
    final = records[-1]
    assert final["test_accuracy"] == pytest.approx(result.test.accuracy)


def test_jsonl_one_object_per_logged_step(tracked):
    run_dir, _, _, records = tracked
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(records)
    # logs at 20, 40, 60; evaluations at 30 (a line of its own) and 60 (merged); the final line
    assert [r["step"] for r in records] == [20, 30, 40, 60, 60]
    step60 = [r for r in records if r["step"] == 60 and "loss" in r][0]
    assert step60["validation_accuracy"] is not None  # log and evaluation merged in one line
    assert all(json.loads(line)["step"] for line in lines)


def test_histograms_images_graph(tracked):
    _, _, events, _ = tracked
    tags = events.Tags()
    for name in ("hidden1.linear.weight", "hidden1.linear.bias", "logits.weight"):
        for kind in ("weights", "gradients"):
            assert [e.step for e in events.Histograms(f"{kind}/{name}")] == [30, 60]
    grad = events.Histograms("gradients/logits.weight")[-1].histogram_value
    assert grad.num == 500 * 10 and grad.max > grad.min
    images = events.Images("validation/misclassified")
    assert [i.step for i in images] == [30, 60]
    png = Image.open(io.BytesIO(images[0].encoded_image_string))
    assert png.size == (images[0].width, images[0].height) and png.width > 100
    assert tags["graph"] is True
    assert any(node.op for node in events.Graph().node)


@pytest.mark.parametrize("preset", ["seed-mlp", "lenet"])
def test_graph_is_the_one_add_graph_writes(preset):
    """The graph is traced without torch's trace check (which costs start-up time), and it is
    the graph torch's own ``add_graph`` would write, node for node."""
    _tensorboard_without_tensorflow()
    from torch.utils.tensorboard._pytorch_graph import graph

    model = build_model(small_config(preset).model).eval()
    sample = torch.rand(1, 784)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated in recent torch
        ours, our_stats = _graph_profile(model, sample)
        theirs, their_stats = graph(model, sample)
    assert ours == theirs and our_stats == their_stats
    assert len(ours.node) > 5


def test_writing_the_graph_imports_no_distributed_tensors(tmp_path):
    """A one-process run's TensorBoard start-up stays free of torch's DTensor stack (0.65 s of
    imports on two cores, which ``add_graph``'s trace check pulled in)."""
    script = textwrap.dedent(
        f"""
        import sys
        from mnistlab.data import load_splits
        from mnistlab.io.tracking import TrackingCallback
        from mnistlab.training import train
        from tests.conftest import small_config
        config = small_config("seed-mlp", "train.steps=4", "train.log_every=2")
        train(config, load_splits("mnist-sample"), callbacks=[TrackingCallback({str(tmp_path)!r})])
        print("dtensor" if "torch.distributed.tensor" in sys.modules else "clean")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "clean"
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.Tags()["graph"] is True


def test_hparams_with_final_metrics(tracked):
    _, result, events, _ = tracked
    content = events.PluginTagToContent("hparams")
    experiment = hparams_metadata.parse_experiment_plugin_data(
        content[hparams_metadata.EXPERIMENT_TAG]
    )
    assert {"optim.lr", "model.hidden", "train.steps"} <= {h.name for h in experiment.hparam_infos}
    assert "hparams/test_accuracy" in {m.name.tag for m in experiment.metric_infos}
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    assert start.hparams["optim.lr"].number_value == pytest.approx(0.1)
    assert start.hparams["preset"].string_value == "seed-mlp"
    assert scalars(events, "hparams/test_accuracy")[60] == pytest.approx(result.test.accuracy)


def test_jsonl_only_writes_no_events(sample_splits, tmp_path):
    config = small_config(
        "seed-mlp",
        "train.steps=20",
        "train.log_every=10",
        "train.eval_every=20",
        "tracking.tensorboard=false",
    )
    train(config, sample_splits, callbacks=[TrackingCallback(tmp_path)])
    assert not list(tmp_path.glob("events.out.tfevents.*"))
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if "loss" in r] == [10, 20]
    assert records[1]["validation_accuracy_raw"] is None  # raw weights are only evaluated for TB


def test_train_command_writes_events(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            "--preset",
            "seed-softmax",
            "--dataset",
            "mnist-sample",
            "--quiet",
            "--json",
            "--run-dir",
            str(run_dir),
            "--set",
            "train.steps=20",
            "--set",
            "train.log_every=10",
            "--set",
            "train.eval_every=10",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert scalars(events, "validation/accuracy")[20] == pytest.approx(
        summary["validation_accuracy"]
    )
    assert [r["step"] for r in read_metrics(run_dir)][:2] == [10, 20]


def test_misclassified_grid_shape():
    import numpy as np

    images = np.random.default_rng(0).random((10, 784), dtype=np.float32)
    grid = misclassified_grid(images, np.arange(10), np.arange(10)[::-1], cols=4)
    assert grid.dtype == np.uint8 and grid.ndim == 2
    assert grid.shape[1] == 4 * (56 + 2) and grid.shape[0] == 3 * (56 + 12 + 2)


def test_a_metrics_file_with_a_byte_that_is_not_utf8(tmp_path):
    from mnistlab.errors import TrackingError

    good = b'{"step": 10, "loss": 1.0}\n'
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(good + b'{"step": 20, "loss": \xff}\n' + good)
    with pytest.raises(TrackingError, match=r"line 2: not UTF-8 text; the file is damaged"):
        read_metrics(path)
    path.write_bytes(good + b'{"step": 20, "lo\xff')  # a torn last line: skipped, as ever
    assert [r["step"] for r in read_metrics(path)] == [10]


# -- metrics.jsonl across checkpoints and resumes ----------------------------------------------
class LineOnDiskAtCheckpoint(Callback):
    """A checkpoint writer of its own: at each checkpoint, what does metrics.jsonl hold on disk
    (as a process killed right after this checkpoint would leave it)?"""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self.seen: dict[int, list[int]] = {}

    def wants(self, run):
        return Wants(checkpoints=True, checkpoint_every=20)

    def on_checkpoint(self, run, state, *, periodic, best):
        lines = self.path.read_bytes().splitlines() if self.path.exists() else []
        self.seen[run.step] = [json.loads(ln)["step"] for ln in lines]


def test_a_checkpoints_step_is_in_metrics_before_the_checkpoint(sample_splits, tmp_path):
    config = small_config("seed-mlp", "train.steps=40", "train.log_every=10", "train.eval_every=20")
    probe = LineOnDiskAtCheckpoint(tmp_path)
    train(config, sample_splits, callbacks=[TrackingCallback(tmp_path, tensorboard=False), probe])
    assert probe.seen[20] == [10, 20] and probe.seen[40][:4] == [10, 20, 30, 40]


def metrics_args(run: Path, *extra: str) -> list[str]:
    return [
        "train", "--dataset", "mnist-sample", "--quiet", "--no-tensorboard", "--run-dir",
        str(run), "--set", "train.log_every=10", "--set", "train.eval_every=20",
        "--set", "checkpoint.every=20", "--set", "checkpoint.keep=5", "--set", "train.threads=1",
        "--set", "train.device=cpu", *extra,
    ]  # fmt: skip


def test_resuming_from_an_older_step_keeps_metrics_in_order_and_the_curve_smooth(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(metrics_args(whole, "--set", "train.steps=60")) == 0
    assert main(metrics_args(cut, "--set", "train.steps=60")) == 0
    older = cut / "checkpoints" / "step-000020.pt"
    assert older.exists()
    assert main(["train", "--resume", str(older), "--quiet", "--no-tensorboard"]) == 0

    def by_step(run: Path) -> list[dict]:
        return [r for r in read_metrics(run) if "loss" in r]

    steps = [r["step"] for r in read_metrics(cut)]
    assert steps == sorted(steps), steps  # in step order, no stretch written twice
    assert [r["step"] for r in by_step(cut)] == [10, 20, 30, 40, 50, 60]
    assert sum("test_accuracy" in r for r in read_metrics(cut)) == 1
    for got, want in zip(by_step(cut), by_step(whole), strict=True):
        assert got["loss"] == want["loss"]  # resume is exact on the CPU
        assert got["loss_smoothed"] == pytest.approx(want["loss_smoothed"], rel=1e-12)
