"""Datasets: IDX files, the registry of known datasets, finding/downloading/verifying, splits, batches.

Offline first: ``locate`` looks in ``--data-dir``/``$MNISTLAB_DATA``, the user cache and
``/usr/share/datasets`` before it downloads; ``load_arrays`` verifies everything before training.
"""

from mnistlab.data.batching import Batcher
from mnistlab.data.idx import read_idx, read_idx_header, write_idx
from mnistlab.data.locate import Located, ProgressCallback, candidate_dirs, download, locate
from mnistlab.data.registry import DATASETS, DatasetSpec, FileSpec, class_names, get_dataset
from mnistlab.data.splits import Split, Splits, load_splits
from mnistlab.data.verify import VerifyReport, load_arrays, verify

__all__ = [
    "DATASETS",
    "Batcher",
    "DatasetSpec",
    "FileSpec",
    "Located",
    "ProgressCallback",
    "Split",
    "Splits",
    "VerifyReport",
    "candidate_dirs",
    "class_names",
    "download",
    "get_dataset",
    "load_arrays",
    "load_splits",
    "locate",
    "read_idx",
    "read_idx_header",
    "verify",
    "write_idx",
]
