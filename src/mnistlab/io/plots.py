"""Learning curves from runs' ``metrics.jsonl``: loss, validation accuracy and learning rate of one
or several runs on one figure, so two presets can be compared at a glance.

Headless: matplotlib's Agg backend is chosen explicitly, so plotting works over SSH, in CI and in
containers without a display.

    mnistlab plot runs/seed-mlp runs/seed-mlp-book -o compare.png
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistlab.atomic import atomic_write
from mnistlab.errors import TrackingError

METRICS_FILE = "metrics.jsonl"  # the name io.tracking writes


@dataclass
class Curves:
    """One run's series, by step, duplicates (after a resume) resolved in favour of the last."""

    label: str
    loss: list[tuple[int, float]] = field(default_factory=list)
    loss_smoothed: list[tuple[int, float]] = field(default_factory=list)
    validation: list[tuple[int, float]] = field(default_factory=list)
    validation_raw: list[tuple[int, float]] = field(default_factory=list)
    lr: list[tuple[int, float]] = field(default_factory=list)
    test_accuracy: float | None = None


def metrics_path(run: str | Path) -> Path:
    """``RUN/metrics.jsonl`` for a run folder, or the file itself."""
    path = Path(run)
    return path if path.suffix == ".jsonl" and not path.is_dir() else path / METRICS_FILE


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a line torn by a crash mid-write is skipped."""
    path = metrics_path(path)
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        raise TrackingError(
            f"{path} does not exist: is it a run folder of `mnistlab train` "
            "(with tracking.jsonl = true)?"
        ) from None
    except OSError as exc:
        raise TrackingError(f"cannot read {path}: {exc.strerror or exc}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if number == len(lines) or (line.startswith(b"{") and not line.rstrip().endswith(b"}")):
                continue  # a line a crash interrupted (a resumed run writes on after it)
            what = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "not JSON"
            raise TrackingError(f"{path}, line {number}: {what}; the file is damaged") from None
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def load_curves(run: str | Path, label: str | None = None) -> Curves:
    path = metrics_path(run)
    records = read_metrics(path)
    if not records:
        raise TrackingError(
            f"{path} holds no metrics yet (training logs every train.log_every steps)"
        )
    name = label or (path.parent.name if path.name == METRICS_FILE else path.stem)
    series: dict[str, dict[int, float]] = {
        k: {}
        for k in ("loss", "loss_smoothed", "validation_accuracy", "validation_accuracy_raw", "lr")
    }
    curves = Curves(name)
    for r in records:
        for key, by_step in series.items():
            if r.get(key) is not None:
                by_step[int(r["step"])] = float(r[key])
        if r.get("test_accuracy") is not None:
            curves.test_accuracy = float(r["test_accuracy"])
    curves.loss = sorted(series["loss"].items())
    curves.loss_smoothed = sorted(series["loss_smoothed"].items())
    curves.validation = sorted(series["validation_accuracy"].items())
    curves.validation_raw = sorted(series["validation_accuracy_raw"].items())
    curves.lr = sorted(series["lr"].items())
    return curves


def _xy(points: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def _unique_labels(runs: list[Path]) -> list[str]:
    """Folder names, or parent/name where two runs share a folder name."""
    names = [metrics_path(r).parent.name for r in runs]
    return [
        f"{metrics_path(r).parent.parent.name}/{n}" if names.count(n) > 1 else n
        for r, n in zip(runs, names, strict=True)
    ]


def plot_runs(
    runs: list[str | Path], output: str | Path, *, title: str | None = None, dpi: int = 110
) -> Path:
    """Write a PNG of the learning curves of ``runs`` to ``output``; returns its path."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if not runs:
        raise TrackingError("name at least one run folder (or metrics.jsonl) to plot")
    paths = [Path(r) for r in runs]
    all_curves = [
        load_curves(p, label) for p, label in zip(paths, _unique_labels(paths), strict=True)
    ]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, c in enumerate(all_curves):
        color = colors[i % len(colors)]
        if c.loss:
            ax_loss.plot(*_xy(c.loss), color=color, alpha=0.35, linewidth=1)
        if c.loss_smoothed:
            ax_loss.plot(*_xy(c.loss_smoothed), color=color, label=c.label)
        test = f" (test {100 * c.test_accuracy:.2f}%)" if c.test_accuracy is not None else ""
        if c.validation:
            steps, acc = _xy(c.validation)
            ax_acc.plot(
                steps, [100 * a for a in acc], color=color, marker=".", label=c.label + test
            )
        if c.validation_raw:
            steps, acc = _xy(c.validation_raw)
            ax_acc.plot(steps, [100 * a for a in acc], color=color, linestyle="--", alpha=0.6)
        if c.lr:
            ax_lr.plot(*_xy(c.lr), color=color, label=c.label)
    ax_loss.set(title="training loss (L2 included)", xlabel="step", ylabel="loss")
    if any(v > 0 for c in all_curves for _, v in c.loss):
        ax_loss.set_yscale("log")
    ax_acc.set(
        title="validation accuracy (EMA solid, raw dashed)", xlabel="step", ylabel="accuracy (%)"
    )
    ax_lr.set(title="learning rate", xlabel="step", ylabel="lr")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.suptitle(title or "mnistlab: " + " vs ".join(c.label for c in all_curves))
    fig.tight_layout()
    out = Path(output)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=dpi, format=out.suffix.lstrip(".").lower() or "png")
    except ValueError as exc:  # a suffix matplotlib cannot write, e.g. .txt
        raise TrackingError(f"cannot write the figure {out}: {exc}") from None
    finally:
        plt.close(fig)
    return atomic_write(out, buffer.getvalue(), what="figure", error=TrackingError)
