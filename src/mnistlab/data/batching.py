"""Mini-batches in TensorFlow's ``DataSet.next_batch`` order, as index tensors.

Each epoch is a fresh permutation drawn from a seeded generator; a batch that crosses the end of
an epoch takes the rest of the old permutation plus the start of the new one. The batcher only
hands out indices, so the images stay in one tensor on the training device and a data-parallel
rank can gather just its own shard of each global batch.
"""

from __future__ import annotations

from typing import Any

import torch


class Batcher:
    """Endless stream of index batches over ``num_examples`` items."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, *, shuffle: bool = True):
        if num_examples < 1:
            raise ValueError("a batcher needs at least one example")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.epochs_completed = 0
        self.index_in_epoch = 0
        self.perm = self._new_permutation()

    def _new_permutation(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_examples)
        return torch.randperm(self.num_examples, generator=self.generator)

    def next_indices(self) -> torch.Tensor:
        """The next ``batch_size`` indices (int64, CPU)."""
        start, size = self.index_in_epoch, self.batch_size
        if start + size <= self.num_examples:
            self.index_in_epoch = start + size
            return self.perm[start : start + size]
        # Crossing the end of an epoch: rest of this one, then the head of a new permutation.
        parts = [self.perm[start:]]
        need = size - (self.num_examples - start)
        while True:
            self.epochs_completed += 1
            self.perm = self._new_permutation()
            if need <= self.num_examples:
                parts.append(self.perm[:need])
                self.index_in_epoch = need
                return torch.cat(parts)
            parts.append(self.perm)  # a batch larger than the dataset spans several epochs
            need -= self.num_examples

    @property
    def epoch(self) -> float:
        """Epochs completed so far, fractional."""
        return self.epochs_completed + self.index_in_epoch / self.num_examples

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "epochs_completed": self.epochs_completed,
            "index_in_epoch": self.index_in_epoch,
            "perm": self.perm.clone(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_examples"]) != self.num_examples:
            raise ValueError(
                f"the saved data order covers {state['num_examples']} examples, "
                f"this dataset has {self.num_examples}"
            )
        self.batch_size = int(state["batch_size"])
        self.epochs_completed = int(state["epochs_completed"])
        self.index_in_epoch = int(state["index_in_epoch"])
        self.perm = state["perm"].clone()
        self.generator.set_state(state["generator"])
