"""Command-line flags that are settings: one table from flag to ``section.key``.

``mnistlab train --device cpu`` means ``--set train.device=cpu``: these flags become overrides at
the edge, applied after ``--set`` (an explicit flag wins) and validated once with everything else
(``config.resolve``); no namespace travels further. ``resume`` reads the same table to know which
settings a command line changes. A flag that is a setting gets one line here.
"""

from __future__ import annotations

import argparse
from typing import Any

from mnistlab.errors import ConfigError

FLAG_SETTINGS: dict[str, str] = {
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "device": "train.device",
    "checkpoint_every": "checkpoint.every",
    "keep": "checkpoint.keep",
    "parallel": "parallel.mode",
    "workers": "parallel.workers",
    "schedule": "parallel.schedule",
    "microbatches": "parallel.microbatches",
}
"""argparse ``dest`` -> setting key."""


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``{key: value}`` for each setting flag this command line gives (unset flags are ``None``)."""
    found = {key: getattr(args, flag, None) for flag, key in FLAG_SETTINGS.items()}
    return {key: value for key, value in found.items() if value is not None and value != ""}


def override_keys(args: argparse.Namespace) -> list[str]:
    """Every setting key this command line sets itself: ``--set KEY=...`` and setting flags."""
    keys = [item.split("=", 1)[0].strip() for item in args.overrides if "=" in item]
    return keys + list(flag_settings(args))


def tensorboard_events(args: argparse.Namespace) -> bool | None:
    """Whether to write TensorBoard events: ``None`` follows ``tracking.tensorboard``."""
    no_events = getattr(args, "no_tensorboard", False)
    if no_events and getattr(args, "tensorboard", False):
        raise ConfigError("--tensorboard and --no-tensorboard contradict each other: pick one")
    return False if no_events else (True if getattr(args, "tensorboard", False) else None)
