"""``--parallel tensor``: model parallelism, each dense layer's weight matrix split across ranks.

DTensor's ``parallelize_module`` applies Megatron's pairing to the dense layers in order: the
first of a pair column-wise (each rank holds a slice of its output units, no communication), the
second row-wise (each rank multiplies its slice of the inputs; one all-reduce sums the partial
logits). For ``seed-mlp`` that is ``hidden1`` column-wise and ``logits`` row-wise; for ``lenet``
its dense layers ``fc`` and ``logits``, while the convolutions stay whole on every rank
(replicated DTensors, so gradients and the optimizer see one kind of tensor). Every rank sees
the whole batch; the parameters equal the one-process run's up to float summation order::

    mnistlab train --parallel tensor --workers 2
    torchrun --nproc-per-node 2 -m mnistlab train --parallel tensor

The loop's pieces work on DTensors unchanged: L2 and the moving average are foreach ops that
DTensor shards, and checkpoints gather each tensor with ``full_tensor()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)

from mnistlab.errors import ParallelError
from mnistlab.parallel.base import MakeOptimizer
from mnistlab.parallel.dist import DistributedStrategy, decorrelate_dropout


def tensor_plan(model: nn.Module) -> dict[str, ParallelStyle]:
    """Column-wise then row-wise over the dense layers in order; a last unpaired layer is split
    column-wise with its output gathered (so the logits are whole on every rank)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ParallelError("tensor parallelism splits dense layers, and this model has none")
    plan: dict[str, ParallelStyle] = {}
    for i in range(0, len(linears) - 1, 2):
        plan[linears[i]] = ColwiseParallel()
        plan[linears[i + 1]] = RowwiseParallel()
    if len(linears) % 2:
        plan[linears[-1]] = ColwiseParallel(output_layouts=Replicate())
    return plan


def _replicate_rest(model: nn.Module, plan: dict[str, ParallelStyle], mesh: DeviceMesh) -> None:
    """Make the stages the plan does not touch (LeNet's convolutions) replicated DTensors."""

    def to_dtensor(_mod: nn.Module, inputs: Any, mesh: DeviceMesh) -> tuple[Any, ...]:
        return tuple(
            x if isinstance(x, DTensor) else DTensor.from_local(x, mesh, [Replicate()])
            for x in inputs
        )

    def to_local(_mod: nn.Module, output: Any, _mesh: DeviceMesh) -> Any:
        return output.to_local() if isinstance(output, DTensor) else output

    for name, stage in model.named_children():
        covered = any(key == name or key.startswith(name + ".") for key in plan)
        if not covered and any(True for _ in stage.parameters()):
            distribute_module(
                stage,
                mesh,
                input_fn=to_dtensor,  # type: ignore[arg-type]
                output_fn=to_local,
            )


class TensorParallel(DistributedStrategy):
    """Dense layers split across ranks with DTensor; the whole batch on every rank."""

    mode = "tensor"

    def __init__(self, device: str = "auto"):
        super().__init__(device)
        self.mesh: DeviceMesh | None = None

    def prepare(self, model: nn.Module, make_optimizer: MakeOptimizer) -> None:
        model = model.to(self.device)
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))
        plan = tensor_plan(model)
        parallelize_module(model, self.mesh, plan)
        _replicate_rest(model, plan, self.mesh)
        self.model = model
        self.optimizer = make_optimizer(list(model.parameters()))
        decorrelate_dropout(self.rank)

    def _let_go(self) -> None:
        """The mesh holds the group in a registry of its own, and DTensor's sharding caches
        keep every mesh they have seen for the life of the process: emptied, the mesh they
        keep no longer keeps the group."""
        registry = getattr(self.mesh, "_pg_registry", None)
        if isinstance(registry, dict):
            registry.clear()
        super()._let_go()
        self.mesh = None

    def global_penalty(self, local: torch.Tensor) -> torch.Tensor:
        """The penalty over split weights is a partial sum on each rank until it is gathered."""
        return local.full_tensor() if isinstance(local, DTensor) else local

    def reduce_losses(self, losses: torch.Tensor) -> torch.Tensor:
        return losses  # the logits, and so the loss, are whole and equal on every rank

    def predict(
        self,
        images: torch.Tensor,
        params: Sequence[torch.Tensor] | None = None,
        batch_size: int = 10_000,
    ) -> torch.Tensor | None:
        """Every rank runs its slice of the model (the layers communicate); main keeps it."""
        with self.watchdog.guard("tensor-parallel evaluation"):
            out = super().predict(images, params, batch_size)
        return out if self.is_main else None

    def full_state(self, tensors: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        names = [n for n, _ in self.local_parameters()]
        return {
            n: (t.full_tensor() if isinstance(t, DTensor) else t).detach().to("cpu", copy=True)
            for n, t in zip(names, tensors, strict=True)
        }

    def local_state(self, full: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each rank cuts its own slice from the full tensor it loaded (no communication)."""
        out: list[torch.Tensor] = []
        for name, p in self.local_parameters():
            value = full[name].to(self.device, p.dtype)
            if isinstance(p, DTensor):
                value = distribute_tensor(value, p.device_mesh, p.placements, src_data_rank=None)
            out.append(value)
        return out
