"""A torchrun worker for tests/test_parallel.py: trains several cases in one process group.

Starting torch takes seconds on a small machine, so one launch runs many cases back to back::

    torchrun --standalone --nproc-per-node 2 tests/dist_worker.py --cases cases.json --out DIR

Each case is ``{"name", "preset", "overrides": [...], "mode", "schedule", "microbatches",
"dtype", "resume"}``; the main rank writes ``DIR/<name>.pt`` with the consolidated final state
(``Run.state_dict()`` plus the last loss) or, when the case raised a ``MnistlabError``,
``DIR/<name>.err`` with the message.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mnistlab.config import resolve
from mnistlab.data import Split, Splits, load_splits
from mnistlab.errors import MnistlabError
from mnistlab.io.callbacks import Callback, Wants
from mnistlab.parallel import make_parallel_strategy
from mnistlab.parallel.dist import init_group
from mnistlab.training import train


class Capture(Callback):
    """Saves the consolidated end state: the loop hands it over at the last step (every rank
    takes part in consolidating it; the hooks run on the main rank)."""

    def __init__(self, path: Path):
        self.path = path
        self.state: dict[str, Any] | None = None

    def wants(self, run: Any) -> Wants:
        return Wants(checkpoints=True)  # checkpoint_every=0: only the last step

    def on_checkpoint(self, run: Any, state: dict[str, Any], *, periodic: bool, best: bool) -> None:
        if periodic:
            self.state = state

    def on_end(self, run: Any, result: Any) -> None:
        assert self.state is not None and self.state["step"] == run.step
        torch.save(
            self.state
            | {
                "last_loss": run.last_loss,
                "test_accuracy": result.test.accuracy if result.test else None,
            },
            self.path,
        )


def as_dtype(data: Splits, dtype: torch.dtype) -> Splits:
    """The same splits with images in ``dtype`` (float64 takes float32 rounding out of the
    comparison of modes, leaving only the order of summation)."""

    def cast(split: Split) -> Split:
        return Split(split.images.to(dtype), split.labels)

    return replace(
        data, train=cast(data.train), validation=cast(data.validation), test=cast(data.test)
    )


def run_case(case: dict[str, Any], data: Splits, out: Path, strategy: Any = None) -> None:
    """Train one case (with ``strategy``, or one process) and capture its end state."""
    dtype = getattr(torch, case.get("dtype", "float32"))
    config = case_config(case)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the model is built in this dtype
    try:
        resume = torch.load(case["resume"], weights_only=False) if case.get("resume") else None
        train(
            config,
            as_dtype(data, dtype),
            strategy=strategy,
            callbacks=[Capture(out / f"{case['name']}.pt")],
            resume_state=resume,
        )
    finally:
        torch.set_default_dtype(previous)


def case_config(case: dict[str, Any]):
    overrides = [
        *case.get("overrides", []),
        f"parallel.mode={case['mode']}",
        f"parallel.schedule={case.get('schedule', 'gpipe')}",
        f"parallel.microbatches={case.get('microbatches', 1)}",
    ]
    return resolve(case.get("preset", "seed-mlp"), None, overrides)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    cases = json.loads(Path(args.cases).read_text())
    info = init_group("cpu")
    data = load_splits("mnist-sample")
    for case in cases:
        config = case_config(case)
        try:
            strategy = make_parallel_strategy(config)
            assert strategy is not None
            run_case(case, data, out, strategy)
        except MnistlabError as exc:
            if info.rank == 0:
                (out / f"{case['name']}.err").write_text(str(exc))
        torch.distributed.barrier()


if __name__ == "__main__":
    main()
