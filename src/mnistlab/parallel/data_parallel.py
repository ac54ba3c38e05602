"""``--parallel data``: synchronous data parallelism with ``DistributedDataParallel``.

Every rank holds a full replica. The global batch (``train.batch_size``, 100 for the presets) is
cut into ``world_size`` equal shards in the one-process order; each rank gathers only its own
rows, DDP averages the shard gradients during backward, and every rank takes the same optimizer
step. Because the shards are equal, the mean of shard means is the whole batch's mean, so the
parameters equal the one-process run's up to float summation order::

    mnistlab train --parallel data --workers 2
    torchrun --nproc-per-node 4 -m mnistlab train --parallel data
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mnistlab.errors import ParallelError
from mnistlab.parallel.base import LossFn, MakeOptimizer, check_divisible
from mnistlab.parallel.dist import DistributedStrategy, decorrelate_dropout


class DataParallel(DistributedStrategy):
    """Each rank: its shard of every global batch, a full replica, DDP-averaged gradients."""

    mode = "data"

    def __init__(self, batch_size: int, device: str = "auto"):
        super().__init__(device)
        self.per_rank = check_divisible(
            batch_size, self.world_size, "shards across workers", "the number of workers"
        )
        self.ddp: DistributedDataParallel | None = None

    def prepare(self, model: nn.Module, make_optimizer: MakeOptimizer) -> None:
        self.model = model.to(self.device)
        # DDP broadcasts rank 0's weights at construction, so replicas start identical even if a
        # rank's initialisation differed; the optimizer holds the replica's own parameters.
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = make_optimizer(list(self.model.parameters()))
        decorrelate_dropout(self.rank)

    def _let_go(self) -> None:
        super()._let_go()
        self.ddp = None  # its reducer holds the group

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        if indices.numel() != self.per_rank * self.world_size:
            raise ParallelError(
                f"data parallel got a batch of {indices.numel()} rows, expected "
                f"{self.per_rank * self.world_size}; train.batch_size changed after the start"
            )
        start = self.rank * self.per_rank
        return indices[start : start + self.per_rank]

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        assert self.ddp is not None, "prepare() first"
        loss = loss_fn(self.ddp(x), y)
        loss.backward()  # DDP all-reduces and averages the gradients bucket by bucket
        return loss.detach()

    def predict(
        self,
        images: torch.Tensor,
        params: Sequence[torch.Tensor] | None = None,
        batch_size: int = 10_000,
    ) -> torch.Tensor | None:
        """Replicas are identical, so the main rank evaluates alone; the others go on."""
        if not self.is_main:
            return None
        return super().predict(images, params, batch_size)
