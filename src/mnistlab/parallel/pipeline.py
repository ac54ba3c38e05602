"""``--parallel pipeline``: consecutive stages of the model on different ranks.

The model is a ``StagedModel`` of named stages; rank ``r`` holds the ``r``-th contiguous group of
them (``seed-mlp`` on two ranks: ``[hidden1] | [logits]``; ``lenet``: ``[conv1, conv2] | [fc,
logits]``). ``torch.distributed.pipelining`` cuts each global batch into ``--microbatches M``
equal micro-batches and streams them through the stages with the GPipe schedule (all forwards,
then all backwards) or 1F1B (one forward, one backward, so fewer activations are alive). Each
micro-batch's loss is divided by ``M``, so the accumulated gradients and the summed loss equal
the one-process step on the whole batch, up to float summation order::

    mnistlab train --parallel pipeline --workers 2 --schedule 1f1b --microbatches 4
    torchrun --nproc-per-node 2 -m mnistlab train --parallel pipeline --microbatches 4

The last stage computes the loss, so it is the main rank: it prints, logs and writes checkpoints.
For evaluation and checkpoints the stages send their tensors to it by name (it keeps a whole copy
of the model to evaluate with), so checkpoints are consolidated and mode-independent.

gloo's batched send/receive (what the schedules use) is known to be able to hang; every step
runs under the watchdog of ``dist.py``, so a stall ends the group instead of freezing it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe
from torch.func import functional_call

from mnistlab.errors import ParallelError
from mnistlab.models import StagedModel
from mnistlab.parallel.base import LossFn, MakeOptimizer, check_divisible
from mnistlab.parallel.dist import DistributedStrategy


def split_stages(names: Sequence[str], parts: int) -> list[list[str]]:
    """Contiguous groups of stage names, as equal in count as possible (earlier ones larger)."""
    if not 1 <= parts <= len(names):
        raise ParallelError(
            f"a pipeline of {parts} stages needs a model with at least {parts} stages; this one "
            f"has {len(names)} ({', '.join(names)}): use at most {len(names)} workers"
        )
    size, extra = divmod(len(names), parts)
    groups, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        groups.append(list(names[start:end]))
        start = end
    return groups


class PipelineParallel(DistributedStrategy):
    """Rank ``r`` runs stage group ``r``; micro-batches flow forward and gradients back."""

    mode = "pipeline"

    def __init__(
        self, batch_size: int, schedule: str = "gpipe", microbatches: int = 1, device: str = "auto"
    ):
        super().__init__(device)
        if schedule not in ("gpipe", "1f1b"):
            raise ParallelError(f"unknown pipeline schedule {schedule!r}: choose gpipe or 1f1b")
        check_divisible(batch_size, microbatches, "micro-batches", "--microbatches")
        self.schedule_name = schedule
        self.microbatches = microbatches
        self.main_rank = self.world_size - 1  # the stage that holds the loss
        self.stages: list[list[str]] = []
        self.full_model: nn.Module | None = None
        self._schedule: Any = None
        self._loss_fn: LossFn | None = None

    # -- set-up ----------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, make_optimizer: MakeOptimizer) -> None:
        names = [n for n, _ in model.named_children()]
        self.stages = split_stages(names, self.world_size)
        mine = StagedModel(OrderedDict((n, getattr(model, n)) for n in self.stages[self.rank]))
        self.model = mine.to(self.device)
        if self.is_main:  # evaluates whole; its own stages are shared with ``mine``, so live
            self.full_model = model.to(self.device)
        self.optimizer = make_optimizer(list(self.model.parameters()))

    def _let_go(self) -> None:
        super()._let_go()
        self.full_model = self._schedule = None  # the schedule's stage holds the group

    def _build_schedule(self) -> Any:
        assert self.model is not None, "prepare() first"
        stage = PipelineStage(self.model, self.rank, self.world_size, self.device)
        # 1F1B needs at least one micro-batch per stage; with fewer, its order *is* GPipe's.
        use_1f1b = self.schedule_name == "1f1b" and self.microbatches >= self.world_size
        kind = Schedule1F1B if use_1f1b else ScheduleGPipe
        return kind(stage, self.microbatches, loss_fn=self._scaled_loss, scale_grads=False)

    def _scaled_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert self._loss_fn is not None
        return self._loss_fn(output, target) / self.microbatches

    # -- one step --------------------------------------------------------------------------------
    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        if x.shape[0] % self.microbatches:
            check_divisible(int(x.shape[0]), self.microbatches, "micro-batches", "--microbatches")
        self._loss_fn = loss_fn
        if self._schedule is None:
            self._schedule = self._build_schedule()
        first, last = self.rank == 0, self.rank == self.world_size - 1
        losses: list[torch.Tensor] = []
        with self.watchdog.guard("a pipeline step (send/receive between stages)"):
            if first and last:
                self._schedule.step(x, target=y, losses=losses)
            elif first:
                self._schedule.step(x)
            elif last:
                self._schedule.step(target=y, losses=losses)
            else:
                self._schedule.step()
        if not last:
            return torch.zeros((), device=self.device)
        return torch.stack([loss.detach() for loss in losses]).sum()

    def reduce_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """Only the last stage knows the losses; it sends them to every rank, so a NaN stops
        all ranks at the same step with the same message."""
        values = losses.detach().clone()
        dist.broadcast(values, src=self.main_rank)
        return values

    def global_penalty(self, local: torch.Tensor) -> torch.Tensor:
        total = local.detach().to(self._comm_device, torch.float32).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        params: Sequence[torch.Tensor] | None = None,
        batch_size: int = 10_000,
    ) -> torch.Tensor | None:
        """The stages send their weights (or moving averages) to the main rank, which evaluates
        its whole copy of the model: one small transfer instead of streaming every image."""
        tensors = params if params is not None else [p for _, p in self.local_parameters()]
        with self.watchdog.guard("gathering weights for evaluation"):
            full = self.full_state(tensors)
        if not self.is_main:
            return None
        assert self.full_model is not None
        mapping = {n: t.to(self.device) for n, t in full.items()}
        was_training = self.full_model.training
        self.full_model.eval()
        try:
            out = [
                functional_call(self.full_model, mapping, (images[i : i + batch_size],)).argmax(
                    dim=1
                )
                for i in range(0, images.shape[0], batch_size)
            ]
        finally:
            self.full_model.train(was_training)
        return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)

    # -- consolidated state ----------------------------------------------------------------------
    def full_state(self, tensors: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every stage's tensors, by name, on the main rank (others get only their own)."""
        mine = super().full_state(tensors)
        return self._gather_dicts(mine)

    def optimizer_state(self) -> dict[str, Any]:
        state = super().optimizer_state()
        state["scalars"] = self._gather_dicts(state["scalars"])
        return state

    def _gather_dicts(self, mine: dict[str, Any]) -> dict[str, Any]:
        box: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(mine, box, dst=self.main_rank)
        if box is None:
            return mine
        merged: dict[str, Any] = {}
        for part in box:
            merged.update(part)
        return merged
