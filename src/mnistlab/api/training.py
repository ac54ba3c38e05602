"""Training from Python: ``mnistlab.train(...)`` and what it returns.

The run is assembled by ``mnistlab.session`` exactly as ``mnistlab train`` assembles it (the
data and its sample fall-back, the run folder claimed and locked, the callbacks); this module
only turns keywords into settings and wraps the result for a notebook. Messages go through the
``logging`` logger ``"mnistlab"``; ``quiet=False`` adds the progress lines.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mnistlab.api.model import Model
from mnistlab.errors import ConfigError
from mnistlab.io.callbacks import Callback, Wants

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mnistlab.config import Config
    from mnistlab.training import TrainResult

log = logging.getLogger("mnistlab")


# -- settings --------------------------------------------------------------------------------------
def _setting_key(name: str, keys: list[str]) -> str:
    """``steps`` -> ``train.steps``; ``optim__lr`` -> ``optim.lr``; ambiguous or unknown: error."""
    if "__" in name:
        return name.replace("__", ".", 1)
    hits = [k for k in keys if k.rpartition(".")[2] == name]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        spelled = " or ".join(k.replace(".", "__") for k in hits)
        raise ConfigError(f"setting {name!r} is ambiguous: write {spelled}")
    return name  # set_value names the nearest valid key


def _check_preset(preset: Any) -> str:
    from mnistlab.config import PRESETS

    if not isinstance(preset, str):
        raise ConfigError(
            f"the preset is a name ({', '.join(PRESETS)}), not {type(preset).__name__} "
            f"{preset!r}; settings are keywords: mnistlab.train('seed-mlp', steps=2000)"
        )
    return preset


def make_config(preset: str = "seed-mlp", **settings: Any) -> Config:
    """A preset with ``settings`` applied, checked like ``mnistlab train --set``. A setting is
    named by its key (``steps=2000``, ``lr=0.2``) or, where two sections share a key, as
    ``section__key`` (``train__seed=1``). The Python API trains in this process only."""
    from mnistlab.config import all_keys, resolve, set_value, validate

    config = resolve(_check_preset(preset))
    keys = all_keys()
    for name, value in settings.items():
        config = set_value(config, _setting_key(name, keys), value)
    if config.data.data_dir:  # as the train command does: valid from any working folder
        absolute = str(Path(config.data.data_dir).expanduser().absolute())
        config = set_value(config, "data.data_dir", absolute)
    if config.parallel.mode != "none" or config.parallel.workers > 1:
        raise ConfigError(
            "the Python API trains in one process; for parallel training use "
            "`mnistlab train --parallel MODE --workers N`"
        )
    return validate(config)


# -- what a run records ----------------------------------------------------------------------------
LOG_COLUMNS = ("step", "loss", "data_loss", "lr", "epoch", "ema_decay", "train_accuracy")
VALIDATION_COLUMNS = {
    "val_step": "step",
    "val_accuracy": "validation_accuracy",
    "val_accuracy_raw": "validation_accuracy_raw",
    "best_val_accuracy": "best_validation_accuracy",
}


class History(Mapping[str, list[Any]]):
    """The record of a run as columns, like Keras's ``history.history``.

    Every ``train.log_every`` steps: ``step``, ``loss`` (with L2), ``data_loss``, ``lr``,
    ``epoch``, ``ema_decay``, ``train_accuracy`` (``None`` unless tracked). Every validation:
    ``val_step``, ``val_accuracy`` (the moving average's weights), ``val_accuracy_raw``,
    ``best_val_accuracy``. ``history["loss"]`` is a list; ``to_pandas()`` one table by step."""

    def __init__(self, logs: list[dict[str, Any]], validations: list[dict[str, Any]]):
        self.logs = logs
        self.validations = validations
        self._columns: dict[str, list[Any]] = {c: [r.get(c) for r in logs] for c in LOG_COLUMNS}
        for name, key in VALIDATION_COLUMNS.items():
            self._columns[name] = [r.get(key) for r in validations]

    def __getitem__(self, key: str) -> list[Any]:
        try:
            return self._columns[key]
        except KeyError:
            raise KeyError(
                f"{key!r}: the history's columns are {', '.join(self._columns)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)

    def __repr__(self) -> str:
        return (
            f"<History: {len(self.logs)} log records (step {', '.join(LOG_COLUMNS[1:])}), "
            f"{len(self.validations)} validations (val_step, val_accuracy, ...)>"
        )

    def to_pandas(self) -> Any:
        """One ``pandas.DataFrame`` indexed by step: the log columns and the validation columns
        side by side (empty where a step had no such record). Needs pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise ConfigError("History.to_pandas needs pandas: pip install pandas") from None
        logs = pd.DataFrame(self.logs, columns=list(LOG_COLUMNS)).set_index("step")
        renamed = {key: name for name, key in VALIDATION_COLUMNS.items() if name != "val_step"}
        val = pd.DataFrame(self.validations, columns=["step", *renamed])
        val = val.rename(columns=renamed).set_index("step")
        return logs.join(val, how="outer").sort_index()


class _Recorder(Callback):
    """Keeps every logged and evaluated record, and the last consolidated state the loop hands
    to checkpoint callbacks (the end of training is always one): the trained model."""

    def __init__(self) -> None:
        self.run: Any = None
        self.state: dict[str, Any] | None = None
        self.logs: list[dict[str, Any]] = []
        self.validations: list[dict[str, Any]] = []

    def wants(self, run: Any) -> Wants:
        return Wants(checkpoints=True)

    def on_start(self, run: Any) -> None:
        self.run = run

    def on_log(self, run: Any, record: Any) -> None:
        self.logs.append(record.to_dict() | {"train_accuracy": record.train_accuracy})

    def on_eval(self, run: Any, record: Any) -> None:
        self.validations.append(record.to_dict())

    def on_checkpoint(self, run: Any, state: dict[str, Any], *, periodic: bool, best: bool) -> None:
        if periodic:
            self.state = state

    def weights(self) -> dict[str, torch.Tensor]:
        """The moving average's weights when the run kept one, else the trained parameters;
        with the model's buffers (batch norm's running statistics) where it has any."""
        if self.state is not None:
            from mnistlab.io.checkpoint import saved_weights

            return saved_weights(self.state)
        run = self.run  # no step ran (nothing to hand over): the weights as they are
        tensors = run.ema.shadows if run.ema is not None else run.parameters()
        return {**run.strategy.full_state(tensors), **run.strategy.full_buffers()}


# -- the result ------------------------------------------------------------------------------------
@dataclass
class TrainingResult:
    """What ``mnistlab.train`` returns: the model, its figures and the record of the run."""

    model: Model
    config: Config
    result: TrainResult
    history: History
    run_dir: Path | None = None

    @property
    def test_accuracy(self) -> float | None:
        return self.result.test.accuracy if self.result.test else None

    @property
    def validation_accuracy(self) -> float | None:
        return self.result.validation_accuracy

    def summary(self) -> dict[str, Any]:
        """The final figures, as ``mnistlab train --json`` prints them."""
        return self.result.summary() | {"run_dir": str(self.run_dir) if self.run_dir else None}

    def __repr__(self) -> str:
        acc = self.test_accuracy
        figure = f", test accuracy {100 * acc:.2f}%" if acc is not None else ""
        where = f", in {self.run_dir}" if self.run_dir else ""
        return (
            f"<mnistlab.TrainingResult {self.config.preset} on {self.result.dataset}: "
            f"{self.result.steps:,} steps{figure}, {self.result.train_seconds:.1f} s{where}>"
        )

    def _repr_html_(self) -> str:
        from html import escape

        from mnistlab.io.figures import png_bytes

        s = self.result
        rows = [
            ("preset", self.config.preset),
            ("dataset", s.dataset),
            ("steps", f"{s.steps:,}"),
            ("test accuracy", _pct(self.test_accuracy)),
            ("validation accuracy", _pct(s.validation_accuracy)),
            ("best validation", _pct(s.best_validation_accuracy)),
            ("training time", f"{s.train_seconds:.1f} s"),
            ("run folder", str(self.run_dir) if self.run_dir else "(none: nothing written)"),
        ]
        table = "".join(
            f"<tr><th style='text-align:left'>{escape(k)}</th><td>{escape(v)}</td></tr>"
            for k, v in rows
        )
        png = base64.b64encode(png_bytes(self.figure(), dpi=72)).decode()
        return (
            f"<table><caption>mnistlab training</caption>{table}</table>"
            f"<img alt='learning curves' src='data:image/png;base64,{png}'/>"
        )

    def figure(self) -> Figure:
        """Learning curves: loss, validation accuracy and learning rate by step (shown inline
        in a notebook; ``.savefig(path)`` writes it)."""
        from mnistlab.io.figures import new_figure

        fig = new_figure(figsize=(13, 3.8), layout="constrained")
        ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
        h = self.history
        for ax, steps, values, label, scale in (
            (ax_loss, h["step"], h["loss"], "loss (with L2)", 1.0),
            (ax_acc, h["val_step"], h["val_accuracy"], "validation accuracy (%)", 100.0),
            (ax_lr, h["step"], h["lr"], "learning rate", 1.0),
        ):
            points = [(s, v) for s, v in zip(steps, values, strict=True) if v is not None]
            ax.plot([s for s, _ in points], [scale * v for _, v in points], marker=".")
            ax.set_xlabel("step")
            ax.set_title(label)
            ax.grid(alpha=0.3)
        acc = self.test_accuracy
        name = f"{self.config.preset} on {self.result.dataset}"
        fig.suptitle(name + (f": test accuracy {100 * acc:.2f}%" if acc is not None else ""))
        return fig


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


# -- train -----------------------------------------------------------------------------------------
def _check_callbacks(callbacks: Any) -> list[Callback]:
    if isinstance(callbacks, Callback):
        return [callbacks]
    if not isinstance(callbacks, Sequence) or isinstance(callbacks, str):
        raise ConfigError(f"callbacks= takes a list of mnistlab Callbacks, not {callbacks!r}")
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise ConfigError(
                f"callbacks= holds {cb!r}, which is not an mnistlab Callback (subclass "
                "mnistlab.training.Callback and override its hooks)"
            )
    return list(callbacks)


def train(
    preset: str = "seed-mlp",
    *,
    steps: int | None = None,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    quiet: bool = True,
    callbacks: Sequence[Callback] = (),
    **settings: Any,
) -> TrainingResult:
    """Train a preset in this process and return its model, figures and history.

    Args:
        preset: seed-softmax, seed-mlp (the default), seed-mlp-book, lenet or speedrun.
        steps, dataset, data_dir, batch_size, lr, seed, device: the common settings
            (``train.steps``, ``data.dataset``, ...). Any other setting is a keyword too, by its
            key (``hidden=[300, 100]``, ``ema_decay=0``) or as ``section__key`` where two
            sections share a key; a typo names the nearest valid one.
        run_dir: keep the run there (config.toml, checkpoints, metrics.jsonl, TensorBoard
            events), as ``mnistlab train --run-dir`` does, so ``mnistlab.load``, ``mnistlab
            serve`` and ``mnistlab board`` can use it. A folder that holds another run is
            refused unless ``overwrite=True``; one that another training is using is refused.
            Without ``run_dir`` nothing is written and ``result.model`` is the only copy.
        resume: a run folder or checkpoint to go on from exactly (its settings win; ``steps``
            may extend it); the run goes on in its own folder unless ``run_dir`` says otherwise.
        quiet: ``False`` prints the progress bar and the evaluation lines.
        callbacks: your own ``mnistlab.training.Callback`` objects.

    The data goes to ``device`` (default auto: CUDA when there is one). Without full MNIST on the
    machine (and ``dataset`` unset) the run uses the bundled sample, logged as a warning.
    """
    from mnistlab.models import build_model
    from mnistlab.parallel.device import resolve_device
    from mnistlab.session import RunRequest, resume_state, run_training
    from mnistlab.session.resume import explicit_settings

    extra = _check_callbacks(callbacks)
    named = {
        "steps": steps,
        "dataset": dataset,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "batch_size": batch_size,
        "lr": lr,
        "train__seed": seed,
        "device": device,
    }
    given = {k: v for k, v in named.items() if v is not None} | settings
    config = make_config(preset, **given)
    resumed = None
    folder = Path(run_dir) if run_dir is not None else None
    if resume is not None:
        from mnistlab.config import all_keys

        keys = [_setting_key(name, all_keys()) for name in given]
        resumed = resume_state(config, resume, explicit=explicit_settings(keys, config))
        for note in resumed.notes:
            log.info(note)
        config = resumed.config
        folder = folder or resumed.run_dir
    recorder = _Recorder()
    request = RunRequest(
        config,
        folder,
        resumed=resumed,
        overwrite=overwrite,
        quiet=quiet,
        callbacks=[recorder, *extra],
        warn=log.warning,
        resume_command="mnistlab.train(resume='{run_dir}')",
    )
    finished = run_training(request)
    config, data, result = finished.config, finished.data, finished.result
    module = build_model(
        config.model,
        num_classes=data.num_classes,
        seed=config.train.seed,
        input_shape=data.input_shape,
    )
    module.load_state_dict(recorder.weights())
    info = {
        "checkpoint": None,
        "preset": config.preset,
        "model": config.model.name,
        "dataset": data.name,
        "steps": result.steps,
        "validation_accuracy": result.validation_accuracy,
        "test_accuracy": result.test.accuracy if result.test else None,
        "num_classes": data.num_classes,
        "ema_weights": config.optim.ema_decay > 0,
    }
    model = Model(module.to(resolve_device(config.train.device)), config, info, recorder.state)
    history = History(recorder.logs, recorder.validations)
    return TrainingResult(model, config, result, history, folder)
