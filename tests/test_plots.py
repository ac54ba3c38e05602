"""``mnistlab plot``: a PNG of learning curves, of the right size and not blank."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from mnistlab.apps.cli import main
from mnistlab.errors import TrackingError
from mnistlab.io.plots import load_curves, plot_runs, read_metrics


def fake_run(folder, lr0: float, torn: bool = False):
    """A metrics.jsonl like a real run's: logs every 100 steps, evaluations every 500."""
    folder.mkdir(parents=True)
    lines = []
    for step in range(100, 2001, 100):
        record = {
            "step": step,
            "loss": 2.0 * math.exp(-step / 700) + 0.1,
            "loss_smoothed": 2.0 * math.exp(-step / 800) + 0.1,
            "lr": lr0 * 0.99 ** (step / 550),
        }
        if step % 500 == 0:
            record |= {
                "validation_accuracy": 0.9 + step / 40000,
                "validation_accuracy_raw": 0.89 + step / 40000,
            }
        lines.append(json.dumps(record))
    lines.append(json.dumps({"step": 2000, "test_accuracy": 0.95}))
    text = "\n".join(lines) + "\n" + ('{"step": 2100, "lo' if torn else "")
    (folder / "metrics.jsonl").write_text(text)
    return folder


def test_plot_two_runs_png(tmp_path):
    a = fake_run(tmp_path / "seed-mlp", 0.1)
    b = fake_run(tmp_path / "seed-mlp-book", 0.8, torn=True)
    out = plot_runs([a, b], tmp_path / "out" / "compare.png", dpi=100)
    image = Image.open(out)
    assert image.format == "PNG" and image.size == (1500, 450)
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # not blank
    assert (pixels < 128).mean() > 0.005  # lines and text drawn
    assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 50


def test_torn_last_line_is_skipped_and_resume_duplicates_resolved(tmp_path):
    run = fake_run(tmp_path / "r", 0.1, torn=True)
    with open(run / "metrics.jsonl", "a") as f:  # a resumed run logs step 2000 again
        f.write("\n" + json.dumps({"step": 2000, "loss": 0.5, "lr": 0.05}) + "\n")
    records = read_metrics(run)
    assert records[-1]["loss"] == 0.5
    curves = load_curves(run)
    assert curves.loss[-1] == (2000, 0.5) and curves.test_accuracy == pytest.approx(0.95)


def test_plot_command(tmp_path, capsys):
    run = fake_run(tmp_path / "one", 0.1)
    assert main(["plot", str(run)]) == 0
    assert (run / "curves.png").exists()
    assert capsys.readouterr().out.strip().endswith("curves.png")
    assert main(["plot", str(tmp_path / "missing")]) == 1
    assert "metrics.jsonl does not exist" in capsys.readouterr().err


def test_damaged_middle_line_is_an_error(tmp_path):
    run = fake_run(tmp_path / "bad", 0.1)
    text = (run / "metrics.jsonl").read_text().splitlines()
    text[3] = "garbage"
    (run / "metrics.jsonl").write_text("\n".join(text) + "\n")
    with pytest.raises(TrackingError, match="line 4"):
        read_metrics(run)
