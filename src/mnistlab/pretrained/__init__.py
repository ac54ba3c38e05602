"""Models that come with mnistlab, ready to read digits with no training: ``pretrained:NAME``.

``pretrained:cnn`` (the speedrun preset's cnn on MNIST), ``pretrained:mlp`` (the seed-mlp
preset on MNIST) and ``pretrained:fashion`` (the speedrun cnn on Fashion-MNIST) are checkpoint
files in this folder, each trained by one recorded ``mnistlab train`` command; ``manifest.json``
beside them holds the command, seed, sha256, size and test accuracy of each.
``scripts/make_pretrained.py`` rebuilds them. Wherever mnistlab takes a checkpoint (``predict``,
``eval``, ``export``, ``serve``, ``mnistlab.load``), ``pretrained:cnn`` names one of these.

Standard library only: the checkpoint code below every front door asks this module for a path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mnistlab.errors import CheckpointError

PREFIX = "pretrained:"
FOLDER = Path(__file__).resolve().parent
MANIFEST = FOLDER / "manifest.json"
DEFAULT = "cnn"
"""The model ``mnistlab predict`` uses when it is given images only."""


def manifest() -> dict[str, dict[str, Any]]:
    """``{name: {"file", "command", "seed", "sha256", "bytes", "test_accuracy", ...}}``."""
    try:
        models = json.loads(MANIFEST.read_text(encoding="utf-8"))["models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"the pretrained models' manifest {MANIFEST} cannot be read ({exc}); reinstall "
            "mnistlab or rebuild them: python scripts/make_pretrained.py"
        ) from None
    if not isinstance(models, dict):
        raise CheckpointError(f"the pretrained models' manifest {MANIFEST} is damaged")
    return models


def is_pretrained(spec: object) -> bool:
    """Whether a checkpoint spec names a model that comes with mnistlab (``pretrained:NAME``)."""
    return isinstance(spec, str | Path) and str(spec).startswith(PREFIX)


def checkpoint_path(spec: str | Path) -> Path:
    """The file of ``pretrained:NAME``, or one ``CheckpointError`` naming the models there are."""
    name = str(spec)[len(PREFIX) :].strip().lower()
    models = manifest()
    if name not in models:
        known = ", ".join(PREFIX + n for n in models)
        raise CheckpointError(f"no pretrained model {str(spec)!r}: there are {known}")
    path = FOLDER / str(models[name]["file"])
    if not path.is_file():
        raise CheckpointError(
            f"{PREFIX}{name} is listed but its file {path} is missing; reinstall mnistlab or "
            "rebuild it: python scripts/make_pretrained.py --only " + name
        )
    return path
