"""Checkpoints, along their seams: the file format (``fileformat.py``: written atomically,
self-checking; format 2 a safetensors file, ``container.py``; format 1 still read, ``legacy.py``),
what a file may hold (``trust.py``: every value checked before anything is built), finding them
(``find.py``: run folders, ``RUN:best``, rebuilding the model) and saving them during training
(``callback.py``)."""

from mnistlab.io.checkpoint.callback import CheckpointCallback
from mnistlab.io.checkpoint.fileformat import (
    BEST_NAME,
    CHECKPOINT_DIR,
    FORMAT_VERSION,
    Checkpoint,
    load_checkpoint,
    read_header,
    save_checkpoint,
    serialize,
    step_name,
)
from mnistlab.io.checkpoint.find import (
    averaged,
    checkpoint_folder,
    load_model,
    resolve_checkpoint,
    saved_weights,
    step_checkpoints,
    weights_only,
)
from mnistlab.io.checkpoint.trust import num_classes

__all__ = [
    "BEST_NAME",
    "CHECKPOINT_DIR",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointCallback",
    "averaged",
    "checkpoint_folder",
    "load_checkpoint",
    "load_model",
    "num_classes",
    "read_header",
    "resolve_checkpoint",
    "save_checkpoint",
    "saved_weights",
    "serialize",
    "step_checkpoints",
    "step_name",
    "weights_only",
]
