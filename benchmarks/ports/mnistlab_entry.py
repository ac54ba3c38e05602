"""mnistlab itself, run the way ``mnistlab train`` runs it: the command's own Python entry
(``mnistlab.apps.cli.main``) with the program's preset, ``--json`` read back. Periodic
checkpoints and TensorBoard events are switched off (``--checkpoint-every 0
--no-tensorboard``) because no other port writes any; the one final checkpoint remains."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from typing import Any

from ports.common import Program, result


def run(
    program: Program,
    dataset: str,
    data_dir: str | None,
    steps: int,
    seed: int,
    threads: int,
    device: str = "cpu",
    *,
    route: str | None = None,
) -> dict[str, Any]:
    import torch

    from mnistlab import __version__
    from mnistlab.apps.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", "--preset", program.preset, "--dataset", dataset]
        argv += ["--data-dir", data_dir] if data_dir else []
        argv += ["--set", f"train.steps={steps}", "--set", f"train.seed={seed}"]
        argv += ["--set", f"train.threads={threads}", "--device", device]
        argv += ["--set", f"train.route={route}"] if route else []
        argv += ["--checkpoint-every", "0", "--no-tensorboard", "--quiet", "--json"]
        argv += ["--run-dir", os.path.join(tmp, "run")]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(argv)
        if code != 0:
            raise RuntimeError(f"mnistlab train exited {code}")
        summary = json.loads(out.getvalue().strip().splitlines()[-1])
    return result(
        framework="mnistlab-auto" if route == "auto" else "mnistlab",
        version=f"mnistlab {__version__} (torch {torch.__version__})",
        program=program,
        steps=int(summary["steps"]),
        seconds=float(summary["train_seconds"]),
        test_accuracy=summary["test_accuracy"],
        validation_accuracy=summary["validation_accuracy"],
        final_loss=None,
        device=device,
        threads=str(torch.get_num_threads()),
        notes=f"engine {summary.get('engine')}" + (f", train.route={route}" if route else ""),
    )
