"""``--parallel async``: asynchronous data parallelism, Hogwild over shared memory.

The seed's TensorFlow trained asynchronously with parameter servers: workers read the shared
weights, compute a gradient on their own batch and apply it without waiting for one another.
On one machine the same thing needs no server: the weights live in shared memory
(``torch.multiprocessing``'s file-system sharing), every worker maps them, and each worker's
optimizer step writes into them directly, lock-free (Hogwild, Niu et al. 2011)::

    mnistlab train --parallel async --workers 4
    torchrun --nproc-per-node 4 -m mnistlab train --parallel async

Single machine only, and not bit-reproducible: the interleaving of reads and writes changes from
run to run. What each worker does, exactly:

- it runs the one training loop (``mnistlab.training.loop``) unchanged, for its share of the updates:
  ``train.steps`` counts updates of all workers together, so each does ``ceil(steps / N)``
  updates of a whole batch (``train.batch_size`` rows, as TensorFlow's async workers did); the
  learning rate decays per *total* update (``decay_steps / N`` of a worker's steps), and
  ``eval_every``, ``log_every`` and ``checkpoint.every`` are divided by ``N`` the same way
  (``worker_config``);
- it reads its own stream of batches: worker 0 the one-process order, worker ``r`` the same
  epoch-wise order relabelled through a fixed random permutation of the examples, so each worker
  sees every example once per epoch of its own and no two workers share batches;
- it keeps its own dropout stream and (for momentum or Adam) its own optimizer state;
- the moving average is worker 0's own: after each of its updates it averages the shared weights
  it reads, which then hold everyone's progress; the decay is raised to the power ``N``
  (``0.99 -> 0.9801`` for two workers) so it forgets at the same rate *per total update* as one
  process does. Worker 0 alone evaluates, prints and writes checkpoints; the others never wait
  for it (no collective runs during training).
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING

import torch
import torch.multiprocessing as mp
from torch import nn

from mnistlab.errors import ParallelError
from mnistlab.parallel.base import LossFn, MakeOptimizer
from mnistlab.parallel.dist import DistributedStrategy, decorrelate_dropout

if TYPE_CHECKING:
    from mnistlab.config import Config


class AsyncParallel(DistributedStrategy):
    """N workers on one machine updating one set of shared weights without waiting."""

    mode = "async"

    def __init__(self, device: str = "auto"):
        super().__init__("cpu")  # shared memory is host memory; the group only sets things up
        if self.info.local_world_size != self.world_size:
            raise ParallelError(
                f"--parallel async shares memory, so all workers must be on one machine; this "
                f"group spans {self.world_size // max(1, self.info.local_world_size)} nodes: use "
                "--parallel data across machines"
            )
        self.data_view: torch.Tensor | None = None
        self._view_seed: int | None = None
        self._num_train = 0

    def worker_config(self, config: Config, num_train: int) -> Config:
        """This worker's share of the run (see the module docstring)."""
        n = self.world_size
        t, o, c = config.train, config.optim, config.checkpoint
        decay = o.decay_steps if o.decay_steps is not None else max(1, num_train // t.batch_size)
        self._view_seed = t.seed + 7919 * self.rank
        self._num_train = num_train
        return replace(
            config,
            train=replace(
                t,
                steps=math.ceil(t.steps / n),
                eval_every=max(1, t.eval_every // n),
                log_every=max(1, t.log_every // n),
            ),
            optim=replace(o, decay_steps=max(1, round(decay / n)), ema_decay=o.ema_decay**n),
            checkpoint=replace(c, every=math.ceil(c.every / n) if c.every else 0),
        )

    # -- set-up ----------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, make_optimizer: MakeOptimizer) -> None:
        if self._view_seed is None:
            raise ParallelError(
                "async: call strategy.worker_config(config, len(data.train)) "
                "before training, so each worker runs its share of the updates"
            )
        model = model.to(self.device)
        params: list[torch.Tensor] = list(model.parameters())
        mp.set_sharing_strategy("file_system")  # named segments any local process can map
        payload = None
        if self.rank == 0:
            for p in params:
                p.data.share_memory_()
            buffer = io.BytesIO()
            ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump([p.data for p in params])
            payload = buffer.getvalue()
        payload = self.broadcast_object(payload)
        if self.rank != 0:
            shared = pickle.loads(payload)  # maps worker 0's segments
            for p, s in zip(params, shared, strict=True):
                p.data = s
        self.barrier()  # every worker holds the shared weights before anyone writes
        self.model = model
        self.optimizer = make_optimizer(params)
        decorrelate_dropout(self.rank)
        if self.rank:
            g = torch.Generator().manual_seed(self._view_seed or 0)
            self.data_view = torch.randperm(self._num_train, generator=g)

    def local_state(self, full: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Only resuming loads a state into a run, and an async run cannot be resumed: its
        checkpoints hold one worker's share of the settings, and Hogwild is not reproducible."""
        raise ParallelError(
            "resuming under --parallel async is not supported (Hogwild runs are not "
            "reproducible and their checkpoints hold one worker's share of the settings): "
            "evaluate or export the checkpoint, or resume it with --parallel data or none"
        )

    # -- one step --------------------------------------------------------------------------------
    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        if self.data_view is None:
            return indices
        return self.data_view.index_select(0, indices.cpu()).to(indices.device)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        return super().forward_backward(x.to(self.device), y.to(self.device), loss_fn)

    # -- no collectives while training: workers never wait for one another ----------------------
    def reduce_losses(self, losses: torch.Tensor) -> torch.Tensor:
        return losses

    def all_true(self, flag: bool) -> bool:
        return flag

    def predict(
        self,
        images: torch.Tensor,
        params: Sequence[torch.Tensor] | None = None,
        batch_size: int = 10_000,
    ) -> torch.Tensor | None:
        if not self.is_main:
            return None
        return super().predict(images.to(self.device), params, batch_size)
