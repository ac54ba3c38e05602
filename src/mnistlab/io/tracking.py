"""TensorBoard events and a ``metrics.jsonl`` for every run, written by one callback.

What lands in the run folder (main rank only; docs/tracking.md):

- scalars ``train/loss`` (mean of the last ``log_every`` steps, L2 included), ``train/loss_smoothed``,
  ``train/data_loss``, ``train/learning_rate``, ``train/batch_accuracy``, ``train/ema_decay``,
  ``train/epoch``, ``train/steps_per_second``; ``validation/accuracy`` (EMA weights),
  ``validation/accuracy_raw``, ``validation/best_accuracy``; ``test/accuracy`` at the end;
- ``weights/<name>`` and ``gradients/<name>`` histograms every ``tracking.histogram_every`` steps;
- ``validation/misclassified``: a captioned grid of misclassified validation digits per evaluation;
- the model graph once, and the resolved config with the final metrics in the hparams plugin;
- ``metrics.jsonl``: one JSON object per logged step (with the validation of that step merged
  in), so scripts need no TensorBoard. A step's line is written at the loop's next boundary and
  flushed; before each checkpoint every line so far is on disk (``before_checkpoint``), and a
  resume drops the lines after the step it resumes from (``io/metrics_file.py``), so the file
  always agrees with the checkpoints.

Cost is kept off the hot loop: nothing here runs between log, evaluation and histogram steps
except an integer comparison. Train-batch accuracy is the accuracy of the current weights on the
batch just trained on, which this callback asks of the loop (``wants().batch_accuracy``): one
forward pass of ``batch_size`` images per log step. The misclassified grid comes from the first
``MISCLASSIFIED_POOL`` validation images, so it costs a tenth of an evaluation. The raw-weight
validation the callback asks the loop for is the largest cost (~2-3% of training time at the
defaults; the hooks themselves ~1.5%), as ``benchmarks/tracking.py`` measures.
"""

from __future__ import annotations

import math
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnistlab.config import flat_dict
from mnistlab.errors import TrackingError
from mnistlab.io.callbacks import (
    Callback,
    EvalRecord,
    LogRecord,
    ResultView,
    RunView,
    Wants,
)
from mnistlab.io.digits import misclassified_grid
from mnistlab.io.metrics_file import MetricsFile, finite
from mnistlab.io.plots import METRICS_FILE
from mnistlab.models import build_model

MISCLASSIFIED_POOL = 500
"""Validation images searched for the misclassified grid (the whole split costs a full evaluation)."""
GRID_TILES = 24
HISTOGRAM_BINS = 64
"""Equal-width bins: TensorBoard re-bins for display anyway, and ``add_histogram``'s default
``"tensorflow"`` buckets cost ~10x more (tens of ms for the 392k weights of seed-mlp)."""
SMOOTHING = 0.9
"""Weight of the past in ``train/loss_smoothed`` (a debiased moving average over log points)."""


@torch.no_grad()
def histogram_values(tensor: torch.Tensor, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """The arguments of ``SummaryWriter.add_histogram_raw`` for ``tensor``, computed by torch on
    its own device (a few passes and one small copy, instead of ``add_histogram``'s full copy to
    numpy). Non-finite values are left out of the buckets."""
    v = tensor.detach().flatten().float()
    low, high = (float(x) for x in torch.aminmax(v))
    if not (math.isfinite(low) and math.isfinite(high)):
        v = v[torch.isfinite(v)]
        if v.numel() == 0:
            empty: dict[str, Any] = {"bucket_limits": [], "bucket_counts": []}
            return {"min": 0.0, "max": 0.0, "num": 0, "sum": 0.0, "sum_squares": 0.0, **empty}
        low, high = (float(x) for x in torch.aminmax(v))
    top = high if high > low else low + 1e-6
    counts = torch.histc(v, bins=bins, min=low, max=top)
    edges = torch.linspace(low, top, bins + 1, dtype=torch.float64)[1:]
    return {
        "min": low,
        "max": high,
        "num": int(v.numel()),
        "sum": float(v.sum()),
        "sum_squares": float(v.dot(v)),
        "bucket_limits": edges.tolist(),
        "bucket_counts": counts.cpu().tolist(),
    }


def hparam_values(config: Any) -> dict[str, bool | int | float | str]:
    """The resolved config as values the hparams plugin accepts (lists and ``None`` as text)."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in flat_dict(config).items():
        out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


def _tensorboard_without_tensorflow() -> None:
    """Writing events needs only tensorboard's own protos, but where TensorFlow is installed
    tensorboard imports all of it on first use (seconds of start-up and a page of oneDNN log
    lines). Its documented switch, an importable ``tensorboard.compat.notf``, keeps it on its
    own TensorFlow stub; a process that imported TensorFlow itself keeps using it."""
    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("notf"))


def _graph_profile(model: torch.nn.Module, sample: torch.Tensor) -> tuple[Any, Any]:
    """The model's graph as ``SummaryWriter.add_graph`` writes it, without its trace check.

    ``add_graph`` traces with ``check_trace=True``, and the check's output comparison imports
    torch's whole DTensor stack: 0.65 s of every run's start-up on two CPU cores, for a model
    this callback has just built and a graph nobody checks. The check only verifies the trace;
    the graph written is the same (compared proto for proto on seed-mlp and LeNet)."""
    from tensorboard.compat.proto.config_pb2 import RunMetadata
    from tensorboard.compat.proto.graph_pb2 import GraphDef
    from tensorboard.compat.proto.step_stats_pb2 import DeviceStepStats, StepStats
    from tensorboard.compat.proto.versions_pb2 import VersionDef
    from torch.utils.tensorboard._pytorch_graph import parse

    trace = torch.jit.trace(model, sample, check_trace=False)
    torch._C._jit_pass_inline(trace.graph)
    nodes = parse(trace.graph, trace, sample)
    stats = RunMetadata(step_stats=StepStats(dev_stats=[DeviceStepStats(device="/device:CPU:0")]))
    return GraphDef(node=nodes, versions=VersionDef(producer=22)), stats


class TrackingCallback(Callback):
    """Writes TensorBoard events and ``metrics.jsonl`` into ``run_dir``.

    What it draws beyond the records (batch accuracy, raw-weight validation, the misclassified
    digits) it asks the loop for in ``wants``; the loop computes it on every rank and this
    callback only writes, on the main rank. ``tensorboard`` / ``jsonl`` / ``histogram_every``
    default to the run's ``[tracking]`` settings.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        tensorboard: bool | None = None,
        jsonl: bool | None = None,
        histogram_every: int | None = None,
        flush_secs: int = 10,
    ):
        self.run_dir = Path(run_dir)
        self._tb_flag, self._jsonl_flag, self._hist_flag = tensorboard, jsonl, histogram_every
        self.flush_secs = flush_secs
        self.tensorboard = self.jsonl = False
        self.histogram_every = 0
        self.writer: Any = None
        self.metrics: MetricsFile | None = None
        self._pending: dict[str, Any] | None = None
        self._smoothed = 0.0
        self._smoothing_weight = 0.0
        self._began = 0.0
        self._last_log: tuple[int, float] | None = None

    # -- set-up ----------------------------------------------------------------------------------
    def _settings(self, run: RunView) -> tuple[bool, bool, int]:
        cfg = run.config.tracking
        tensorboard = cfg.tensorboard if self._tb_flag is None else self._tb_flag
        jsonl = cfg.jsonl if self._jsonl_flag is None else self._jsonl_flag
        every = cfg.histogram_every if self._hist_flag is None else self._hist_flag
        return tensorboard, jsonl, (every if tensorboard else 0)

    def wants(self, run: RunView) -> Wants:
        tensorboard, jsonl, every = self._settings(run)
        return Wants(
            raw_eval=tensorboard,
            batch_accuracy=tensorboard or jsonl,
            misclassified=MISCLASSIFIED_POOL if tensorboard else 0,
            histogram_every=every,
        )

    def on_start(self, run: RunView) -> None:
        self.tensorboard, self.jsonl, self.histogram_every = self._settings(run)
        self._began = time.perf_counter()
        self._last_log = (run.step, self._began)
        if not run.is_main:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(
                f"cannot create the run folder {self.run_dir}: {exc.strerror or exc}"
            ) from None
        if self.jsonl:
            resumed = run.step or None
            self.metrics = MetricsFile(self.run_dir / METRICS_FILE, resume_at=resumed)
            if resumed:  # the smoothed loss goes on from where the checkpointed run had it
                for record in self.metrics.kept:
                    if isinstance(record.get("loss"), (int, float)):
                        self._smooth(float(record["loss"]))
        if self.tensorboard:
            _tensorboard_without_tensorflow()
            # Imported here, once, so their first use inside the loop costs no import time.
            import PIL.ImageDraw  # noqa: F401
            import tensorboard.compat.proto.summary_pb2  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: after a resume, TensorBoard drops events a crashed run wrote past it.
            self.writer = SummaryWriter(
                log_dir=str(self.run_dir), purge_step=run.step or None, flush_secs=self.flush_secs
            )
            if run.step == 0:
                self._write_graph(run)

    def _write_graph(self, run: RunView) -> None:
        """The graph of a fresh CPU copy of the architecture: tracing the placed model could
        reach into DDP or DTensor collectives on one rank only. Tracing failures never stop
        training."""
        try:
            model = build_model(
                run.config.model,
                num_classes=run.data.num_classes,
                input_shape=run.data.input_shape,
            ).eval()
            sample = run.data.train.images[:1].detach().to("cpu")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    profile = _graph_profile(model, sample)
                except (ImportError, AttributeError, TypeError):
                    self.writer.add_graph(model, sample)  # torch moved its helpers: the slow way
                else:
                    self.writer._get_file_writer().add_graph(profile)
        except Exception as exc:  # noqa: BLE001 - the graph is a nicety, training is not
            print(
                f"mnistlab: TensorBoard graph skipped ({type(exc).__name__}: {exc})",
                file=sys.stderr,
            )

    # -- every log_every steps -------------------------------------------------------------------
    def on_log(self, run: RunView, log: LogRecord) -> None:
        if not (self.tensorboard or self.jsonl) or not run.is_main:
            return
        accuracy, record = log.train_accuracy, log.to_dict()
        now = time.perf_counter()
        last_step, last_time = self._last_log or (run.step, now)
        rate = (run.step - last_step) / (now - last_time) if now > last_time else None
        self._last_log = (run.step, now)
        loss = record["loss"]
        smoothed = self._smooth(loss)
        entry = dict(
            record,
            loss_smoothed=smoothed,
            train_accuracy=accuracy,
            steps_per_second=rate,
            elapsed=round(now - self._began, 3),
        )
        self._flush_pending()
        self._pending = entry
        if self.writer is not None:
            step, w = run.step, self.writer
            w.add_scalar("train/loss", loss, step)
            w.add_scalar("train/loss_smoothed", smoothed, step)
            w.add_scalar("train/data_loss", record["data_loss"], step)
            w.add_scalar("train/learning_rate", record["lr"], step)
            w.add_scalar("train/epoch", record["epoch"], step)
            if record.get("ema_decay") is not None:
                w.add_scalar("train/ema_decay", record["ema_decay"], step)
            if accuracy is not None:
                w.add_scalar("train/batch_accuracy", accuracy, step)
            if rate is not None:
                w.add_scalar("train/steps_per_second", rate, step)

    def _smooth(self, loss: float) -> float:
        """One more point of the debiased moving average; returns its value."""
        self._smoothing_weight = SMOOTHING * self._smoothing_weight + (1 - SMOOTHING)
        self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * loss
        return self._smoothed / self._smoothing_weight

    def before_checkpoint(self, run: RunView) -> None:
        """This step's record (held back to gather its evaluation) and every earlier one on
        disk before the checkpoint of this step is written: a run killed right after the
        checkpoint keeps the step's line, and a resume finds the file complete up to it."""
        if not run.is_main:
            return
        self._flush_pending()
        if self.metrics is not None:
            self.metrics.sync()

    # -- every eval_every steps ------------------------------------------------------------------
    def on_eval(self, run: RunView, evaluation: EvalRecord) -> None:
        if not run.is_main:
            return
        record = evaluation.to_dict()
        wrong = evaluation.misclassified
        grid = None
        if self.tensorboard and wrong is not None and len(wrong.labels):
            tiles = slice(0, GRID_TILES)
            grid = misclassified_grid(
                wrong.images[tiles],
                wrong.labels[tiles],
                wrong.predicted[tiles],
                image_shape=run.data.input_shape,
            )
        fields = {k: v for k, v in record.items() if k != "step"}
        if self._pending is not None and self._pending.get("step") == record["step"]:
            self._pending.update(fields)
        else:
            self._flush_pending()
            self._pending = {
                "step": record["step"],
                **fields,
                "elapsed": round(time.perf_counter() - self._began, 3),
            }
        if self.writer is None:
            return
        step, w = record["step"], self.writer
        w.add_scalar("validation/accuracy", record["validation_accuracy"], step)
        if record.get("validation_accuracy_raw") is not None:
            w.add_scalar("validation/accuracy_raw", record["validation_accuracy_raw"], step)
        if record.get("best_validation_accuracy") is not None:
            w.add_scalar("validation/best_accuracy", record["best_validation_accuracy"], step)
        if grid is not None:
            self._add_png("validation/misclassified", grid, step)

    def _add_png(self, tag: str, image: np.ndarray, step: int) -> None:
        """An ``H x W`` (gray) or ``H x W x 3`` uint8 image as a TensorBoard image."""
        self.writer.add_image(tag, image, step, dataformats="HW" if image.ndim == 2 else "HWC")

    # -- every histogram_every steps, and bookkeeping after each step ----------------------------
    def on_boundary(self, run: RunView, steps_done: int) -> None:
        if self._pending is not None:
            self._flush_pending()
        if (
            self.histogram_every
            and run.step % self.histogram_every == 0
            and self.writer is not None
        ):
            self._histograms(run)

    @torch.no_grad()
    def _histograms(self, run: RunView) -> None:
        """This rank's parameters and their gradients (still in ``.grad`` right after the step:
        the next step zeroes them). Under tensor or pipeline parallelism these are the main rank's
        shards."""
        add = self.writer.add_histogram_raw
        for name, param in run.named_parameters():
            local = param.to_local() if hasattr(param, "to_local") else param
            add(f"weights/{name}", global_step=run.step, **histogram_values(local))
            if param.grad is not None:
                grad = param.grad.to_local() if hasattr(param.grad, "to_local") else param.grad
                add(f"gradients/{name}", global_step=run.step, **histogram_values(grad))

    def _flush_pending(self) -> None:
        if self._pending is not None and self.metrics is not None:
            self.metrics.write(finite(self._pending))
        self._pending = None

    # -- the end -----------------------------------------------------------------------------------
    def on_end(self, run: RunView, result: ResultView) -> None:
        if not run.is_main:
            return
        self._flush_pending()
        summary = result.summary()
        if self.metrics is not None:
            final = {
                "step": run.step,
                "test_accuracy": summary.get("test_accuracy"),
                "best_validation_accuracy": summary.get("best_validation_accuracy"),
                "samples_per_second": summary.get("samples_per_second"),
                "elapsed": round(time.perf_counter() - self._began, 3),
            }
            self.metrics.write(finite(final))
        if self.writer is not None:
            if summary.get("test_accuracy") is not None:
                self.writer.add_scalar("test/accuracy", summary["test_accuracy"], run.step)
            self._write_hparams(run, summary)
        self._close()

    def _write_hparams(self, run: RunView, summary: dict[str, Any]) -> None:
        """The resolved config and the final metrics in the hparams plugin, in this run's own
        folder (``run_name="."``: by default ``add_hparams`` makes a sub-run named by the clock)."""
        names = (
            "test_accuracy",
            "validation_accuracy",
            "best_validation_accuracy",
            "samples_per_second",
        )
        metrics = {f"hparams/{k}": float(summary[k]) for k in names if summary.get(k) is not None}
        metrics["hparams/steps"] = float(run.step)
        self.writer.add_hparams(
            hparam_values(run.config), metrics, run_name=".", global_step=run.step
        )

    def _close(self) -> None:
        self._flush_pending()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_interrupt(self, run: RunView) -> None:
        self._close()

    def on_failure(self, run: RunView, error: BaseException) -> None:
        self._close()
