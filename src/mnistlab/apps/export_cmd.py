"""``mnistlab export CKPT --format safetensors|onnx|torchscript [-o FILE]``: the EMA weights
(or ``--raw-weights``) as a file other tools load. Input: ``[N, 784]`` float32 in [0, 1]."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistlab.apps.eval_cmd import CKPT_HELP


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from mnistlab.io.export import FORMATS

    p = sub.add_parser(
        "export",
        help="write a checkpoint's model as safetensors, ONNX or TorchScript",
        description="Export the EMA weights of a checkpoint for other tools. The "
        "model takes [N, 784] float32 images in [0, 1] (white ink on "
        "black) and returns [N, classes] logits.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help=CKPT_HELP)
    p.add_argument(
        "--format",
        choices=list(FORMATS),
        default="safetensors",
        help="safetensors (weights + config), onnx (needs mnistlab[export]) or "
        "torchscript (default: safetensors)",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="where to write (default: RUN/export/<preset>-step<N>.<ext>)",
    )
    p.add_argument(
        "--raw-weights",
        action="store_true",
        help="export the trained parameters instead of their moving average",
    )
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from mnistlab.io.checkpoint import averaged, load_model
    from mnistlab.io.export import FORMATS, export_model

    model, ckpt = load_model(args.checkpoint, use_ema=not args.raw_weights)
    config = ckpt.config
    uses_ema = averaged(ckpt.state, use_ema=not args.raw_weights)
    if args.output:
        path = Path(args.output)
    else:
        base = ckpt.run_dir / "export" if ckpt.run_dir else ckpt.path.parent
        path = base / f"{config.preset}-step{ckpt.step}{FORMATS[args.format]}"
    metadata = {
        "format": "mnistlab-model",
        "preset": config.preset,
        "step": str(ckpt.step),
        "weights": "ema" if uses_ema else "raw",
        "input": "[N, 784] float32 in [0, 1]",
        "config": ckpt.state["config"],
    }
    written = export_model(model, args.format, path, metadata)
    print(
        f"mnistlab: wrote {written} ({args.format}, {config.preset} step {ckpt.step:,}, "
        f"{metadata['weights']} weights)"
    )
    return 0
