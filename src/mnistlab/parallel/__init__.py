"""Parallel modes as strategies the one training loop is handed (docs/parallel.md, docs/architecture.md).

``make_parallel_strategy(config)`` picks one for ``parallel.mode``; the modes' modules (DDP,
DTensor, pipelining) are imported only when asked for, so one-process runs stay light::

    mnistlab train --parallel data --workers 2
    torchrun --nproc-per-node 2 -m mnistlab train --parallel pipeline --schedule 1f1b
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from mnistlab.errors import ParallelError
from mnistlab.parallel.base import LossFn, MakeOptimizer, Strategy

if TYPE_CHECKING:
    from mnistlab.config import Config


def _data(config: Config) -> Strategy:
    from mnistlab.parallel.data_parallel import DataParallel

    return DataParallel(config.train.batch_size, device=config.train.device)


def _async(config: Config) -> Strategy:
    from mnistlab.parallel.async_parallel import AsyncParallel

    return AsyncParallel(device=config.train.device)


def _tensor(config: Config) -> Strategy:
    from mnistlab.parallel.tensor_parallel import TensorParallel

    return TensorParallel(device=config.train.device)


def _pipeline(config: Config) -> Strategy:
    from mnistlab.parallel.pipeline import PipelineParallel

    p, t = config.parallel, config.train
    return PipelineParallel(t.batch_size, p.schedule, p.microbatches, device=t.device)


STRATEGIES: dict[str, Callable[[Config], Strategy]] = {
    "data": _data,
    "async": _async,
    "tensor": _tensor,
    "pipeline": _pipeline,
}
"""``parallel.mode`` -> the strategy it starts in each worker (``none``: one process, no
strategy). A mode is one module with a ``Strategy`` subclass, one factory here importing it when
asked for, and its name in ``config.schema.PARALLEL_MODES``."""


def make_parallel_strategy(config: Config) -> Strategy | None:
    """The strategy for ``config.parallel.mode`` in a torchrun worker; ``None`` for one process."""
    from mnistlab.parallel.dist import under_torchrun

    mode = config.parallel.mode
    if mode == "none":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if under_torchrun() and world > 1:
            raise ParallelError(
                f"torchrun started {world} workers but no parallel mode was chosen (each would "
                "train alone): add --parallel data (or async, tensor, pipeline)"
            )
        return None
    if mode not in STRATEGIES:
        raise ParallelError(f"unknown parallel mode {mode!r}: choose none, {', '.join(STRATEGIES)}")
    return STRATEGIES[mode](config)


__all__ = [
    "STRATEGIES",
    "LossFn",
    "MakeOptimizer",
    "ParallelError",
    "Strategy",
    "make_parallel_strategy",
]
