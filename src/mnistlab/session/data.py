"""The data a run trains on: the configured dataset, or full MNIST with the bundled sample as a
fall-back, for ``mnistlab train``, ``--seeds``, ``mnistlab eval`` and ``mnistlab.train`` alike."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from mnistlab.config import PRESETS, Config, set_value

if TYPE_CHECKING:
    from mnistlab.data import Splits

MNIST_TRAIN = 60_000
"""Full MNIST's training file, validation split included."""

STEP_SETTINGS = (
    "train.steps",
    "train.eval_every",
    "train.log_every",
    "checkpoint.every",
    "tracking.histogram_every",
)
"""Settings that count steps: on the sample fall-back they are scaled to its size."""


def fit_to_sample(config: Config, num_train: int, full_train: int) -> tuple[Config, str]:
    """The preset's run measured in epochs of full MNIST, as steps on ``num_train`` digits.

    Only settings still at the preset's value are scaled (a step count the person chose stays);
    the learning-rate decay follows by itself (``decay_steps`` = digits / batch size)."""
    from mnistlab.config import flat_dict

    preset = flat_dict(PRESETS[config.preset]())
    ours = flat_dict(config)
    ratio = num_train / full_train
    for key in STEP_SETTINGS:
        value = ours[key]
        if value == preset.get(key) and value > 0:
            config = set_value(config, key, max(1, round(value * ratio)))
    t = config.train
    epochs = t.steps * t.batch_size / num_train
    if ours["train.steps"] != preset.get("train.steps"):
        return config, f"{t.steps:,} steps as set"
    return config, (
        f"{t.steps:,} steps: the {epochs:.1f} epochs that {config.preset}'s "
        f"{ours['train.steps']:,} steps are on full MNIST"
    )


def _warn(text: str) -> None:
    highlight = "\033[1;33m" if sys.stderr.isatty() else ""
    reset = "\033[0m" if highlight else ""
    print(f"{highlight}mnistlab: {text}{reset}", file=sys.stderr)


def load_data(
    config: Config, *, quiet: bool = False, warn: Callable[[str], None] | None = None
) -> tuple[Config, Splits]:
    """Load the configured dataset; returns the config with ``data.dataset`` as loaded.

    With ``dataset = auto``: full MNIST when it can be found or downloaded, else the bundled
    sample for as many epochs as the preset means on full MNIST, said once through ``warn``
    (default: one highlighted line on stderr). ``quiet`` hides download progress bars."""
    from mnistlab.data import load_splits
    from mnistlab.data.locate import DatasetNotFound
    from mnistlab.data.registry import get_dataset
    from mnistlab.io.progress import download_progress
    from mnistlab.parallel.device import resolve_device

    d = config.data
    device = resolve_device(config.train.device)
    progress = None if quiet else download_progress()
    if d.dataset != "auto":
        return config, load_splits(
            d.dataset,
            d.data_dir,
            validation_size=d.validation_size,
            download=d.download,
            device=device,
            progress=progress,
        )
    try:
        data = load_splits(
            "mnist",
            d.data_dir,
            validation_size=d.validation_size,
            download=d.download,
            device=device,
            progress=progress,
        )
    except DatasetNotFound:  # absent; a corrupt or mislabelled copy is an error, never swapped
        if d.data_dir:
            raise
        data = load_splits("mnist-sample", validation_size=d.validation_size, device=device)
        held_out = d.validation_size
        if held_out is None:
            held_out = get_dataset("mnist").validation_size
        config, how_long = fit_to_sample(config, len(data.train), MNIST_TRAIN - held_out)
        why = "could not be downloaded" if d.download else "downloads are off"
        (warn or _warn)(
            f"full MNIST is not on this machine and {why}: training on "
            f"the bundled mnist-sample ({len(data.train):,} train / {len(data.validation):,} "
            f"validation / {len(data.test):,} test digits) for {how_long}. For full MNIST: "
            "`mnistlab data download mnist`, or --data-dir DIR with its four files "
            "(`mnistlab train --dataset mnist` shows where it looked)."
        )
    return set_value(config, "data.dataset", data.name), data


SAME_DATA = {"mnist": "mnist", "mnist-sample": "mnist"}


def dataset_mismatch(trained_on: str, evaluated_on: str) -> str | None:
    """A warning when a model is scored on another dataset than the one it learnt, else None."""
    if trained_on == "auto":  # an old checkpoint that does not say
        return None
    if SAME_DATA.get(trained_on, trained_on) == SAME_DATA.get(evaluated_on, evaluated_on):
        return None
    return (
        f"this model was trained on {trained_on} but is evaluated on {evaluated_on}: their "
        f"classes differ, so the accuracy below says nothing about the model "
        f"(use --dataset {trained_on} to score it on its own data)"
    )
