"""Exponential moving average of the weights, with TensorFlow's ``num_updates`` rule.

``decay = min(ema_decay, (1 + n) / (10 + n))`` with ``n`` the number of averaging updates done
before this one, so early shadows follow the weights quickly. Shadows start equal to the initial
parameters and are updated in place with one foreach lerp after each optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def ema_decay_at(n: int, decay: float) -> float:
    return min(decay, (1.0 + n) / (10.0 + n))


class EMA:
    def __init__(self, params: Sequence[torch.Tensor], decay: float):
        self.decay = decay
        self.num_updates = 0
        self.params = list(params)
        # Detached views share the parameters' storage: they see every optimizer update, and
        # building them once keeps the per-step cost to the single foreach call.
        self._targets = [p.detach() for p in self.params]
        self.shadows = [t.clone() for t in self._targets]

    @property
    def current_decay(self) -> float:
        """The decay the next update will use."""
        return ema_decay_at(self.num_updates, self.decay)

    @torch.no_grad()
    def update(self) -> None:
        d = ema_decay_at(self.num_updates, self.decay)
        # shadow = d * shadow + (1 - d) * param  ==  lerp(shadow, param, 1 - d)
        torch._foreach_lerp_(self.shadows, self._targets, 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def update_with(self, weight: torch.Tensor) -> None:
        """The same update with its weight (``1 - decay``) as a 0-dim tensor on the device, for a
        step that reads it from a table and runs captured (a host value would be frozen in the
        graph). The caller counts these updates into ``num_updates``."""
        torch._foreach_lerp_(self.shadows, self._targets, [weight] * len(self.shadows))
