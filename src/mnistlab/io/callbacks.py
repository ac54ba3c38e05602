"""The hooks the training loop calls. Defined here, below ``train``, so that checkpointing,
tracking and console output (all in ``io``) can implement them without importing the loop.

Each hook receives the loop's ``Run`` (see ``mnistlab.train.loop``). Every hook runs on every
rank: write only when ``run.is_main``.
"""

from __future__ import annotations

from typing import Any


class Callback:
    def on_start(self, run: Any) -> None:
        """Before the first step (after a resume, at the resumed step)."""

    def on_step(self, run: Any) -> None:
        """After every optimizer step; keep it cheap (check your own interval)."""

    def on_log(self, run: Any, record: dict[str, Any]) -> None:
        """Every ``train.log_every`` steps: step, loss, data_loss, lr, epoch, ema_decay."""

    def on_eval(self, run: Any, record: dict[str, Any]) -> None:
        """After each validation: step, validation_accuracy (EMA), validation_accuracy_raw."""

    def on_end(self, run: Any, result: Any) -> None:
        """After the final test evaluation, with the ``TrainResult``."""

    def on_interrupt(self, run: Any) -> None:
        """Ctrl-C or SIGTERM stopped training at a step boundary: save what must be saved."""

    def on_failure(self, run: Any, error: BaseException) -> None:
        """Training raised (divergence, a bug); the last good checkpoint must stay as it is."""
