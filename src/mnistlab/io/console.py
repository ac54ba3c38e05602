"""What a person sees while training: validation lines, a progress bar, the final summary table."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from mnistlab.io.callbacks import Callback, EvalRecord, LogRecord, ResultView, RunView
from mnistlab.io.progress import Progress


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


class ConsoleCallback(Callback):
    """Prints validation accuracy at each evaluation and keeps a progress bar going (main rank)."""

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None):
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.progress: Progress | None = None

    def on_start(self, run: RunView) -> None:
        if not run.is_main or self.quiet:
            return
        t = run.config.train
        self.progress = Progress(t.steps, desc="train", stream=self.stream, initial=run.step)
        where = f"{run.data.name} ({len(run.data.train):,} train / {len(run.data.validation):,} "
        where += f"validation / {len(run.data.test):,} test, from {run.data.directory})"
        self.progress.write(
            f"mnistlab: {run.config.preset} on {where}, {t.steps:,} steps "
            f"of {t.batch_size}" + (f", resuming at step {run.step:,}" if run.step else "")
        )

    def on_boundary(self, run: RunView, steps_done: int) -> None:
        if self.progress is not None:
            self.progress.update(steps_done)

    def on_log(self, run: RunView, record: LogRecord) -> None:
        if self.progress is not None:
            self.progress.postfix = f"loss {record.loss:.4f}  lr {record.lr:.4g}"

    def on_eval(self, run: RunView, record: EvalRecord) -> None:
        if self.progress is None:
            return
        kind = "EMA" if run.uses_ema else "raw"
        raw = record.validation_accuracy_raw
        extra = f" (raw {percent(raw)})" if raw is not None and run.uses_ema else ""
        self.progress.write(
            f"step {record.step:>6,}  validation accuracy {percent(record.validation_accuracy)} "
            f"({kind}){extra}  loss {run.last_loss:.4f}  lr {run.lr:.5f}"
        )

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def on_end(self, run: RunView, result: ResultView) -> None:
        self._close()

    def on_interrupt(self, run: RunView) -> None:
        self._close()

    def on_failure(self, run: RunView, error: BaseException) -> None:
        self._close()


def summary_table(summary: dict[str, Any], title: str = "mnistlab run") -> str:
    """A two-column table of the final figures."""
    rows = [
        (
            "test accuracy" + (" (EMA weights)" if summary.get("ema_weights") else ""),
            percent(summary.get("test_accuracy")),
        ),
        ("validation accuracy", percent(summary.get("validation_accuracy"))),
        ("best validation accuracy", percent(summary.get("best_validation_accuracy"))),
        ("steps", f"{summary.get('steps', 0):,}"),
        ("wall time", f"{summary.get('wall_seconds', 0):.1f} s"),
        ("training throughput", f"{summary.get('samples_per_second', 0):,.0f} samples/s"),
        ("dataset", f"{summary.get('dataset')} ({summary.get('data_dir')})"),
    ]
    if summary.get("run_dir"):
        rows.append(("run folder", str(summary["run_dir"])))
    width = max(len(k) for k, _ in rows)
    value_width = max(len(v) for _, v in rows)
    rule = "+" + "-" * (width + 2) + "+" + "-" * (value_width + 2) + "+"
    lines = [title, rule]
    lines += [f"| {k.ljust(width)} | {v.ljust(value_width)} |" for k, v in rows]
    lines.append(rule)
    return "\n".join(lines)
