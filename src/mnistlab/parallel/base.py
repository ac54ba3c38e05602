"""The strategy contract, and the plainest strategy: one process.

The training loop is written once (``mnistlab.training.loop``); a parallel mode is a strategy object
the loop is handed. The loop asks the strategy to

- ``prepare(model, make_optimizer)``: place the model (split it, wrap it) and build the optimizer
  over the parameters this rank holds;
- ``shard(indices)``: keep this rank's part of a global batch (identity for one process);
- ``forward_backward(x, y, loss_fn)``: compute the loss of the whole global batch and leave its
  gradient in ``.grad`` of the local parameters (for every mode the same mathematics);
- ``predict(images, params)``: class predictions of the model, or of the model with ``params``
  (the moving-average shadows) in place of its own; collective, the main rank gets the result;
- ``full_state(tensors)`` / ``local_state(full)``: turn per-rank tensors shaped like the local
  parameters into one consolidated ``{name: tensor}`` and back, so checkpoints are mode-independent;
- ``full_buffers()`` / ``load_buffers(full)``: the same for the model's buffers (batch norm's
  running statistics), which one process holds whole (models with batch statistics train in one
  process: ``config.checks`` refuses the parallel modes for them).

``is_main`` gates every print, log line and checkpoint (one writer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call

from mnistlab.errors import ParallelError

if TYPE_CHECKING:
    from mnistlab.config import Config

MakeOptimizer = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Strategy:
    """One process on one device. Parallel strategies subclass this and override what differs."""

    mode = "none"

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.rank = 0
        self.world_size = 1
        self.model: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._make_optimizer: Callable[[], torch.optim.Optimizer] | None = None

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """Built on first use: constructing a ``torch.optim`` optimizer imports torch's compiler
        stack (about 2 s on a small CPU), which a run whose engine updates the weights itself
        (``training/dense.py``) and has no optimizer state never needs."""
        if self._optimizer is None and self._make_optimizer is not None:
            self._optimizer, self._make_optimizer = self._make_optimizer(), None
        return self._optimizer

    @optimizer.setter
    def optimizer(self, value: torch.optim.Optimizer | None) -> None:
        self._optimizer, self._make_optimizer = value, None

    # -- who writes ------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- set-up ----------------------------------------------------------------------------------
    def worker_config(self, config: Config, num_train: int) -> Config:
        """The settings this process trains with; only asynchronous workers, which each run a
        share of the updates, change them (``num_train``: training examples)."""
        return config

    def prepare(self, model: nn.Module, make_optimizer: MakeOptimizer) -> None:
        self.model = model.to(self.device)
        params: list[torch.Tensor] = list(self.model.parameters())
        self.optimizer = None
        self._make_optimizer = lambda: make_optimizer(params)

    def local_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """``(name, parameter)`` for the parameters this rank holds and updates."""
        assert self.model is not None, "prepare() first"
        return list(self.model.named_parameters())

    # -- one step --------------------------------------------------------------------------------
    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        return indices

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        assert self.model is not None
        loss = loss_fn(self.model(x), y)
        loss.backward()
        return loss.detach()

    def train_mode(self, training: bool) -> None:
        assert self.model is not None
        self.model.train(training)

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        params: Sequence[torch.Tensor] | None = None,
        batch_size: int = 10_000,
    ) -> torch.Tensor | None:
        assert self.model is not None
        was_training = self.model.training
        self.model.eval()
        try:
            if params is None:

                def forward(x: torch.Tensor) -> torch.Tensor:
                    assert self.model is not None
                    return self.model(x)
            else:
                names = [n for n, _ in self.local_parameters()]
                mapping = dict(zip(names, params, strict=True))

                def forward(x: torch.Tensor) -> torch.Tensor:
                    assert self.model is not None
                    return functional_call(self.model, mapping, (x,))

            out = [
                forward(images[i : i + batch_size]).argmax(dim=1)
                for i in range(0, images.shape[0], batch_size)
            ]
            return torch.cat(out) if out else torch.empty(0, dtype=torch.int64)
        finally:
            self.model.train(was_training)

    # -- consolidated state ----------------------------------------------------------------------
    def full_state(self, tensors: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Consolidate tensors shaped like ``local_parameters()`` into ``{name: full tensor}``
        on CPU (collective; only the main rank's result is meaningful)."""
        names = [n for n, _ in self.local_parameters()]
        return {n: t.detach().to("cpu", copy=True) for n, t in zip(names, tensors, strict=True)}

    def local_state(self, full: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The inverse of ``full_state``: this rank's part of each named tensor, on its device."""
        return [full[n].to(p.device, p.dtype) for n, p in self.local_parameters()]

    def full_buffers(self) -> dict[str, torch.Tensor]:
        """The model's buffers (batch norm's running statistics) by name, on the CPU."""
        assert self.model is not None, "prepare() first"
        return {n: b.detach().to("cpu", copy=True) for n, b in self.model.named_buffers()}

    @torch.no_grad()
    def load_buffers(self, full: dict[str, torch.Tensor]) -> None:
        assert self.model is not None, "prepare() first"
        for name, buffer in self.model.named_buffers():
            buffer.copy_(full[name])

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer's state by parameter name, consolidated like ``full_state`` so that any
        mode can load it: ``{"tensors": {key: {name: tensor}}, "scalars": {name: {key: value}}}``.
        An optimizer never built has never stepped: its state is empty."""
        if self._optimizer is None:
            return {"tensors": {}, "scalars": {}}
        assert self.optimizer is not None
        names = [n for n, _ in self.local_parameters()]
        state = self.optimizer.state_dict()["state"]
        entries = [state.get(i, {}) for i in range(len(names))]
        tensor_keys = sorted(
            {k for e in entries for k, v in e.items() if isinstance(v, torch.Tensor) and v.ndim > 0}
        )
        tensors = {k: self.full_state([e[k] for e in entries]) for k in tensor_keys}
        scalars = {
            n: {k: v for k, v in e.items() if k not in tensor_keys}
            for n, e in zip(names, entries, strict=True)
            if e
        }
        return {"tensors": tensors, "scalars": scalars}

    def load_optimizer_state(self, saved: dict[str, Any]) -> None:
        if self._optimizer is None and not saved["tensors"] and not saved["scalars"]:
            return  # nothing to restore; the optimizer stays unbuilt until something steps it
        assert self.optimizer is not None
        names = [n for n, _ in self.local_parameters()]
        local = {k: self.local_state(full) for k, full in saved["tensors"].items()}
        new_state: dict[int, dict[str, Any]] = {}
        for i, name in enumerate(names):
            entry = dict(saved["scalars"].get(name, {}))
            for key, tensors in local.items():
                entry[key] = tensors[i]
            if entry:
                new_state[i] = entry
        state = self.optimizer.state_dict()
        state["state"] = new_state
        self.optimizer.load_state_dict(state)

    # -- collectives (trivial for one process) ---------------------------------------------------
    def global_penalty(self, local: torch.Tensor) -> torch.Tensor:
        """The whole model's L2 penalty from the one over this rank's weights (pipeline stages
        each hold some of the weights and add theirs up; every other mode holds them all)."""
        return local

    def reduce_losses(self, losses: torch.Tensor) -> torch.Tensor:
        """Per-step losses of the whole global batch, on the main rank (ranks that hold a shard
        average them; under pipelining the last stage sends them)."""
        return losses

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def all_true(self, flag: bool) -> bool:
        return flag

    def barrier(self) -> None:
        return None

    def close(self) -> None:
        """The end of a run that succeeded (nothing to let go of in one process)."""
        return None

    def lost_peer(self, exc: BaseException) -> Exception | None:
        """``exc`` restated in one line when it only says that another rank went away (one
        process has no other rank: never)."""
        return None


def check_divisible(batch_size: int, parts: int, what: str, key: str) -> int:
    """``batch_size // parts``, or a ``ParallelError`` that says how to make it divide."""
    if parts < 1 or batch_size % parts:
        fits = [n for n in range(1, min(batch_size, 64) + 1) if batch_size % n == 0]
        raise ParallelError(
            f"the batch of {batch_size} cannot be split into {parts} equal {what}: set {key} to a "
            f"divisor of {batch_size} ({', '.join(map(str, fits[:12]))}, ...) or change "
            "train.batch_size (equal parts keep every step equal to the one-process step)"
        )
    return batch_size // parts
