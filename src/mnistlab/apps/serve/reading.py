"""One model reading one digit, and why: the probabilities, the pixels that drove the answer,
and for an MLP the hidden units most active for this drawing.

"Why" is gradient x input on the 28x28 the model sees: for each pixel, how much the winning
class's logit would change per unit of ink there, times the ink there. Positive pixels argue for
the answer, negative ones against. It costs a backward pass, so it is computed only when asked
(``explain``). For an MLP the first hidden layer's units are ranked by activation; each comes with
its weights (the 28x28 pattern it responds to) and its push toward the answer (activation x the
gradient of the winning logit with respect to it). Maps are sent as integers in -100..100 (scaled
by their largest magnitude) to keep the replies small.

A model whose output is not finite (NaN weights, or weights that overflow) is a
``ModelOutputError``: the server answers 422 with that reason, never 500.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnistlab.errors import MnistlabError

TOP_UNITS = 8
"""How many hidden units an MLP's explanation shows."""
HIDDEN_STAGE = "hidden1"
"""The MLP's first hidden layer: its units' weights are 28x28 patterns a person can look at."""


class ModelOutputError(MnistlabError):
    """The model's output for an input is NaN or infinite: it cannot say what it read."""


def _scaled(values: np.ndarray) -> list[Any]:
    """``values`` as integers in -100..100, scaled by the largest magnitude (0 stays 0)."""
    top = float(np.abs(values).max(initial=0.0))
    scaled = np.zeros_like(values) if top == 0.0 else values / top * 100.0
    return np.rint(scaled).astype(int).tolist()


def model_name(spec: str) -> str:
    """A short name for a model spec, shown over its column on the page: ``pretrained:cnn``,
    a run folder's name, ``RUN:best``, or ``RUN/step-N.pt`` for a file in a run's checkpoints."""
    text = str(spec)
    if text.startswith("pretrained:"):
        return text
    best = text.endswith(":best")
    path = Path(text.removesuffix(":best")).resolve()
    name = path.name
    if path.parent.name == "checkpoints":
        name = f"{path.parent.parent.name}/{name}"
    return f"{name}:best" if best else name


@dataclass
class Reader:
    """A loaded model (``mnistlab.api.Model``) ready to read digits for the server."""

    model: Any
    name: str

    @property
    def module(self) -> nn.Module:
        return self.model.module

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    def info(self) -> dict[str, Any]:
        """What the page shows about the model (no local paths beyond the file's name)."""
        info = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v  # JSON has no NaN
            for k, v in self.model.info.items()
            if k != "checkpoint"
        }
        checkpoint = self.model.info.get("checkpoint")
        info["checkpoint"] = Path(checkpoint).name if checkpoint else None
        info["class_names"] = self.class_names
        info["name"] = self.name
        info["explains_units"] = self._hidden_stage() is not None
        return info

    def _hidden_stage(self) -> nn.Module | None:
        if not isinstance(self.module, nn.Sequential):
            return None
        children = dict(self.module.named_children())
        stage = children.get(HIDDEN_STAGE)
        if self.model.config.model.name != "mlp" or not isinstance(stage, nn.Sequential):
            return None
        linear = next((m for m in stage.children() if isinstance(m, nn.Linear)), None)
        return stage if linear is not None and linear.in_features == 784 else None

    def read(self, digit: np.ndarray, *, explain: bool = False) -> dict[str, Any]:
        """The reading of one 28x28 digit, as the JSON the server answers."""
        device = next(self.module.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(digit, dtype=np.float32).reshape(1, 784))
        x = x.to(device)
        if not explain:
            with torch.inference_mode():
                logits = self.module(x)
            probs = self._probabilities(logits)
            return self._answer(probs)
        with torch.enable_grad():
            x.requires_grad_(True)
            wants_units = self._hidden_stage() is not None
            hidden: torch.Tensor | None = None
            h = x
            stages = (  # a staged model's forward, stage by stage, to catch the hidden layer
                list(self.module.named_children())
                if isinstance(self.module, nn.Sequential)
                else [("model", self.module)]
            )
            for name, stage in stages:
                h = stage(h)
                if wants_units and name == HIDDEN_STAGE:
                    hidden = h
            probs = self._probabilities(h)
            label = int(probs.argmax())
            # Gradients for the input and the hidden layer only: backward() would also compute
            # and accumulate the weights' gradients, on every request, from every thread at once.
            wrt = [x] if hidden is None else [x, hidden]
            grads = torch.autograd.grad(h[0, label], wrt)
        saliency = (grads[0] * x).detach().cpu().numpy().reshape(28, 28)
        if not np.isfinite(saliency).all():
            raise ModelOutputError(f"{self.name}: the explanation for this drawing is not finite")
        answer = self._answer(probs)
        answer["why"] = _scaled(saliency)
        if hidden is not None:
            answer["units"] = self._units(hidden, grads[1])
        return answer

    def _probabilities(self, logits: torch.Tensor) -> np.ndarray:
        probs = torch.softmax(logits.detach().float(), dim=1)[0].cpu().numpy()
        if not np.isfinite(probs).all():
            raise ModelOutputError(
                f"{self.name}: the model's output for this drawing is not finite (NaN or "
                "infinite); its weights may be damaged: retrain it or load another checkpoint"
            )
        return probs

    def _answer(self, probs: np.ndarray) -> dict[str, Any]:
        label = int(probs.argmax())
        names = self.class_names
        return {
            "label": label,
            "class": names[label],
            "probability": float(probs[label]),
            "probabilities": [float(p) for p in probs],
            "classes": names,
        }

    def _units(self, hidden: torch.Tensor, grad: torch.Tensor) -> list[dict[str, Any]]:
        stage = self._hidden_stage()
        assert stage is not None
        linear = next(m for m in stage.children() if isinstance(m, nn.Linear))
        act = hidden.detach()[0].cpu().numpy()
        push = (hidden.detach() * grad.detach())[0].cpu().numpy()
        order = np.argsort(-act, kind="stable")[:TOP_UNITS]
        weights = linear.weight.detach().cpu().numpy()
        return [
            {
                "unit": int(i),
                "activation": round(float(act[i]), 4),
                "push": round(float(push[i]), 4),
                "weights": _scaled(weights[i].reshape(28, 28)),
            }
            for i in order
            if act[i] > 0
        ]
