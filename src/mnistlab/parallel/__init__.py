"""Parallel modes as strategies the one training loop is handed (docs/parallel.md, docs/architecture.md).

``make_parallel_strategy(config)`` picks one for ``parallel.mode``; the modes' modules (DDP,
DTensor, pipelining) are imported only when asked for, so one-process runs stay light::

    mnistlab train --parallel data --workers 2
    torchrun --nproc-per-node 2 -m mnistlab train --parallel pipeline --schedule 1f1b
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mnistlab.errors import ParallelError
from mnistlab.parallel.base import LossFn, MakeOptimizer, Strategy

if TYPE_CHECKING:
    from mnistlab.config import Config


def make_parallel_strategy(config: Config) -> Strategy | None:
    """The strategy for ``config.parallel.mode`` in a torchrun worker; ``None`` for one process."""
    from mnistlab.parallel.dist import under_torchrun

    p, t = config.parallel, config.train
    if p.mode == "none":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if under_torchrun() and world > 1:
            raise ParallelError(
                f"torchrun started {world} workers but no parallel mode was chosen (each would "
                "train alone): add --parallel data (or async, tensor, pipeline)"
            )
        return None
    if p.mode == "data":
        from mnistlab.parallel.data_parallel import DataParallel

        return DataParallel(t.batch_size, device=t.device)
    if p.mode == "async":
        from mnistlab.parallel.async_parallel import AsyncParallel

        return AsyncParallel(device=t.device)
    if p.mode == "tensor":
        from mnistlab.parallel.tensor_parallel import TensorParallel

        return TensorParallel(device=t.device)
    if p.mode == "pipeline":
        from mnistlab.parallel.pipeline import PipelineParallel

        return PipelineParallel(t.batch_size, p.schedule, p.microbatches, device=t.device)
    raise ParallelError(
        f"unknown parallel mode {p.mode!r}: choose none, data, async, tensor or pipeline"
    )


__all__ = ["LossFn", "MakeOptimizer", "ParallelError", "Strategy", "make_parallel_strategy"]
