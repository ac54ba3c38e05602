"""Which engine runs a run's steps, and the check of the losses it reports.

The loop (``training/loop.py``) cuts training into stretches between boundaries (logging,
evaluation, checkpoints) and hands each stretch to an engine. Every engine computes the same
mathematics — TF's batch order, ``lr · decay^(step/decay_steps)``, cross-entropy plus
``l2 · ΣW²/2`` on weights, the optimizer step, the moving average — and leaves the same state
behind, so checkpoints, resume and callbacks never care which one ran:

- ``AutogradEngine`` (``training/engine.py``): autograd through the strategy's
  ``forward_backward``; serves every model, optimizer and parallel mode.
- ``FusedDenseEngine`` (``training/dense.py``): softmax regression and the MLP with plain SGD in one
  process. The gradient is written out by hand, calling the very kernels autograd would call (so
  the result is bit-equal on CPU), into buffers allocated once: no graph to build, no fresh
  1.5 MB gradient on every step, no per-step host work beyond a few kernel calls. By the
  ``trimmed`` route its subclass ``TrimmedDenseEngine`` (``training/trimmed.py``) runs the first
  layer's products only over the pixels each batch inks.
- ``TabledDenseEngine`` (``training/dense_tables.py``; CUDA by default): the same step as one pure function
  that reads the learning rate, the EMA weight and the batch indices from device tables,
  captured as a CUDA graph of ``log_every`` steps that is replayed: one launch per stretch,
  nothing for the host to do between boundaries; ``train.compile=on`` passes it through
  ``torch.compile`` first.
- ``TabledAutogradEngine`` (``training/captured.py``; CUDA by default for every other one-process
  run with SGD, momentum or Nesterov): the autograd step reading the same tables, captured as a
  CUDA graph of one step and replayed for each.

``select_engine`` picks the fastest engine the run allows (``train.fused``, ``train.compile``,
``train.cuda_graphs`` switch each) and says why when it falls back to autograd.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mnistlab.errors import TrainingError
from mnistlab.training.captured import TabledAutogradEngine, captured_reason
from mnistlab.training.dense import FusedDenseEngine, fused_reason
from mnistlab.training.dense_tables import TabledDenseEngine
from mnistlab.training.engine import AutogradEngine, Engine
from mnistlab.training.routes import choose_route
from mnistlab.training.trimmed import TrimmedDenseEngine

if TYPE_CHECKING:
    from mnistlab.training.state import Run


def select_engine(run: Run) -> tuple[Engine, str | None]:
    """The fastest engine for ``run`` and, when it is not the fused one, why."""
    t = run.config.train
    if not t.fused:
        return AutogradEngine(run), "train.fused=false"
    reason = fused_reason(run)
    cuda = run.strategy.device.type == "cuda"
    if reason is not None:
        if cuda and _on(t.cuda_graphs, True) and captured_reason(run) is None:
            return TabledAutogradEngine(run, graphs=True), reason
        return AutogradEngine(run), reason
    # Off unless asked: measured on one H100, the compiled step replayed slower (11.6 s for
    # seed-mlp's 30,000 steps) than the captured eager step (5.5 s); see docs/speed.md.
    compile_step = _on(t.compile, False)
    graphs = cuda and _on(t.cuda_graphs, True)
    if compile_step or graphs:
        return TabledDenseEngine(run, compile_step=compile_step, graphs=graphs), None
    route = choose_route(run)
    if route == "trimmed":
        return TrimmedDenseEngine(run), None
    return FusedDenseEngine(run, route), None


def _on(setting: str, default: bool) -> bool:
    return default if setting == "auto" else setting == "on"


DIVERGENCE_FACTOR = 100.0
"""How far above its start the loss may climb before the run counts as diverged. Training that
works brings the loss down from its first steps. Measured on full MNIST, seed 1, every step
logged (2 CPU cores, AMD EPYC): the highest loss of seed-softmax, seed-mlp, speedrun (whole runs)
and lenet (its first 2,000 steps) was their first; seed-mlp-book's lr 0.8 lifts it to 7.8x its
first (24.1 at step 3, from 3.07) before it falls. 100x leaves a margin of 12 over that;
train.loss=naive still ends at an infinite loss (step 2), as it always did.
(``python benchmarks/loss_peaks.py``.)"""


def loss_ceiling(first_loss: float, num_classes: int) -> float:
    """The highest loss a run that still learns can report: ``DIVERGENCE_FACTOR`` times the
    larger of its first loss and ``log(num_classes)`` (a guess's cross-entropy; a run resumed
    from a low loss is not held to a hundred times that)."""
    start = first_loss if math.isfinite(first_loss) else 0.0
    return DIVERGENCE_FACTOR * max(start, math.log(max(2, num_classes)))


def check_finite_losses(
    values: Sequence[float], first_step: int, ceiling: float = math.inf
) -> None:
    """Stop a run whose loss became NaN or infinite, or finite but absurd (above ``ceiling``:
    at lr 1000 the speedrun's loss reaches 1e23 and its accuracy a guess's, with no NaN)."""
    for offset, value in enumerate(values):
        step = first_step + offset + 1
        if not math.isfinite(value):
            raise TrainingError(
                f"training diverged: the loss became {value} at step {step}; "
                "lower optim.lr (or use train.loss=stable); checkpoints written before it are kept"
            )
        if value > ceiling:
            raise TrainingError(
                f"training diverged: the loss reached {value:.4g} at step {step}, more than "
                f"{DIVERGENCE_FACTOR:g} times where it started ({ceiling / DIVERGENCE_FACTOR:.4g}); "
                "lower optim.lr; checkpoints written before it are kept"
            )
