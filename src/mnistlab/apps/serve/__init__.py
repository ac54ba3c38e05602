"""``mnistlab serve [MODEL ...]``: draw a digit in the browser, watch one or more models read it.

A Starlette app on uvicorn (the optional extra ``pip install "mnistlab[serve]"``). The page is
static HTML/JS/CSS from ``apps/static`` (no CDN, nothing fetched at run time). While you draw it
posts the canvas as a PNG to ``POST /api/compare``, which answers, for every model given, the
probabilities, the pixels that drove the answer and (for an MLP) its most active hidden units,
with the 28x28 digit the models saw (the same preprocessing as ``mnistlab predict``). Scripts post
a PNG/JPEG body or JSON to ``POST /api/predict`` (see ``inputs.py``).

Each MODEL is any checkpoint spec: a run folder, ``RUN:best``, a checkpoint file, or
``pretrained:NAME``; with none, the pretrained cnn and MLP. Binds 127.0.0.1 unless told otherwise.

The package: ``inputs`` (request bodies to digits, typed errors), ``reading`` (a model reading a
digit, and why), ``app`` (the routes), ``connections`` (deadlines, connection cap, TCP_NODELAY,
shutdown), and this module (the command).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mnistlab.apps.eval_cmd import CKPT_HELP
from mnistlab.errors import CheckpointError, ConfigError

STATIC = Path(__file__).resolve().parents[1] / "static"
INSTALL_HINT = 'mnistlab serve needs Starlette and uvicorn: pip install "mnistlab[serve]"'
DEFAULT_MODELS = ("pretrained:cnn", "pretrained:mlp")


def __getattr__(name: str) -> Any:  # ``from mnistlab.apps.serve import create_app``, lazily
    if name == "create_app":
        from mnistlab.apps.serve.app import create_app

        return create_app
    raise AttributeError(name)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="a local web page to draw a digit and watch models read it",
        description="Start a local web server with a drawing canvas, live predictions, the "
        "28x28 image the model sees and the pixels that drove its answer, and a JSON endpoint "
        "(POST /api/predict). Give two or more models to compare them side by side.",
    )
    p.add_argument(
        "models",
        metavar="MODEL",
        nargs="*",
        help=f"{CKPT_HELP}, or pretrained:NAME (default: {' and '.join(DEFAULT_MODELS)})",
    )
    p.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free one)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 opens it to "
        "the network)",
    )
    p.add_argument(
        "--raw-weights",
        action="store_true",
        help="use the trained parameters instead of their moving average",
    )
    limits = p.add_argument_group("connection limits")
    limits.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open connections at most; more are answered 503 (default 256, fewer if the "
        "open-file limit is lower)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=float,
        default=5.0,
        help="seconds a connection may wait without starting a request (default 5)",
    )
    limits.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds from a request's first byte to the end of its headers (default 10)",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=30.0,
        help="seconds from the headers to the end of the body (default 30)",
    )
    p.set_defaults(func=run_serve)


def load_models(specs: list[str], *, raw_weights: bool = False) -> list[Any]:
    """A ``Reader`` per spec; with none, the pretrained models that exist (one line if none)."""
    from mnistlab.api import load
    from mnistlab.apps.serve.reading import Reader, model_name

    if specs:
        return [Reader(load(s, raw_weights=raw_weights), model_name(s)) for s in specs]
    readers, missing = [], []
    for spec in DEFAULT_MODELS:
        try:
            readers.append(Reader(load(spec, raw_weights=raw_weights), spec))
        except CheckpointError as exc:
            missing.append(f"{spec}: {exc}")
    if not readers:
        raise ConfigError(
            "no model given and no pretrained model to fall back on; give a run folder or "
            f"a checkpoint: mnistlab serve runs/NAME ({'; '.join(missing)})"
        )
    for line in missing:
        print(f"mnistlab: warning: not serving {line}", file=sys.stderr)
    return readers


def run_serve(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    import asyncio

    import torch

    from mnistlab.apps.serve.app import create_app
    from mnistlab.apps.serve.connections import Limits, bind, connection_cap, make_server, serve

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535; got {args.port}")
    wanted = Limits(
        idle_timeout=args.idle_timeout,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
    )
    wanted.check()
    # One torch thread per read: requests already run side by side in the thread pool, and one
    # read is too small to split across cores (benchmarks/serve.py, phase 0, times both).
    torch.set_num_threads(1)
    readers = load_models(args.models, raw_weights=args.raw_weights)
    cap, note = connection_cap(wanted.max_connections)
    limits = Limits(**{**wanted.__dict__, "max_connections": cap})
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    if args.host in ("0.0.0.0", "::", ""):
        print(
            f"mnistlab: warning: --host {args.host} makes the page reachable from other "
            "machines on the network; use 127.0.0.1 to keep it on this one",
            file=sys.stderr,
        )
    if note:
        print(f"mnistlab: note: {note}", file=sys.stderr)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    shown = f"[{shown}]" if ":" in shown else shown
    for reader in readers:
        print(f"mnistlab: serving {reader.name}: {reader.model!r}", flush=True)
    print(f"mnistlab: open http://{shown}:{port}/  (Ctrl-C stops)", flush=True)
    server = make_server(create_app(readers), limits)
    try:
        asyncio.run(serve(server, sock))
    finally:
        sock.close()
    why = f" ({server.stopped_by})" if server.stopped_by else ""
    print(f"mnistlab: server stopped{why}", flush=True)
    return 0
