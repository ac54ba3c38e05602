"""``mnistlab serve RUN|CKPT [--port P] [--host H]``: draw a digit in the browser, see it read.

A Starlette app on uvicorn (the optional extra ``pip install "mnistlab[serve]"``). The page is
static HTML/JS/CSS from ``apps/static`` (no CDN, nothing fetched at run time); it posts the canvas
as a PNG to ``POST /api/predict``, which answers with the probabilities and the 28x28 digit the
model saw (the same preprocessing as ``mnistlab predict``). Scripts may post a PNG/JPEG body or
JSON: a 28x28 array of [0, 1] values, bare or as ``{"image": [...], "preprocess": false}``.

Requests are bounded (body size, pixel count) and checked; anything wrong is a 4xx JSON
``{"error": "..."}``. Nothing a request sends is written to disk or unpickled. Binds 127.0.0.1
unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mnistlab.apps.eval_cmd import CKPT_HELP
from mnistlab.errors import ConfigError, DataError

STATIC = Path(__file__).parent / "static"
MAX_BODY = 2 * 1024 * 1024
"""Largest request body, in bytes: a canvas PNG is a few kilobytes, a phone photo a few MB."""
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp")
INSTALL_HINT = 'mnistlab serve needs Starlette and uvicorn: pip install "mnistlab[serve]"'


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="a local web page to draw a digit and watch the model read it",
        description="Start a local web server with a drawing canvas, live predictions, the "
        "28x28 image the model sees, and a JSON endpoint (POST /api/predict).",
    )
    p.add_argument("checkpoint", metavar="RUN|CKPT", help=CKPT_HELP)
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
    p.set_defaults(func=run_serve)


# -- requests --------------------------------------------------------------------------------------
class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _digit_from_json(body: bytes) -> tuple[np.ndarray, bool]:
    """``(array, preprocess)`` from a JSON body."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(400, "the body is not valid JSON") from None
    preprocess = False
    if isinstance(value, dict):
        preprocess = bool(value.get("preprocess", False))
        value = value.get("image")
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadRequest(400, "'image' must be a 28x28 array of numbers") from None
    if arr.ndim != 2 or (not preprocess and arr.shape != (28, 28)):
        raise BadRequest(400, f"'image' must be a 28x28 array of numbers; got shape {arr.shape}")
    if arr.size > 1_000_000:
        raise BadRequest(413, "the array is too large (at most 1,000,000 values)")
    if not np.isfinite(arr).all():
        raise BadRequest(400, "the array holds NaN or infinite values")
    return arr, preprocess


def digit_from_request(content_type: str, body: bytes) -> np.ndarray:
    """The 28x28 digit a request carries, or ``BadRequest``."""
    from mnistlab.api import _as_digit, decode_image
    from mnistlab.apps.predict import preprocess

    kind = content_type.split(";")[0].strip().lower()
    if not body:
        raise BadRequest(400, 'empty body: send a PNG or JPEG image, or JSON {"image": 28x28}')
    try:
        if kind == "application/json":
            arr, wants_preprocess = _digit_from_json(body)
            if arr.max(initial=0.0) > 1.0:
                arr = arr / 255.0
            arr = np.clip(arr, 0.0, 1.0)
            return preprocess(arr, where="the array") if wants_preprocess else _as_digit(arr)
        if kind in IMAGE_TYPES:
            return preprocess(decode_image(body), where="the image")
    except DataError as exc:
        text = str(exc)
        status = 413 if "too large" in text or "bomb" in text else 400
        raise BadRequest(422 if "no digit" in text else status, text) from None
    raise BadRequest(
        415,
        f"unsupported content type {kind or '(none)'!r}: send image/png, image/jpeg or "
        "application/json",
    )


def create_app(model: Any, *, max_body: int = MAX_BODY) -> Any:
    """The Starlette app serving ``model`` (an ``mnistlab.api.Model``)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    info = {k: v for k, v in model.info.items() if k != "checkpoint"}
    info["checkpoint"] = (
        Path(model.info["checkpoint"]).name if model.info.get("checkpoint") else None
    )
    info["class_names"] = model.class_names

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BadRequest(400, "bad Content-Length header")
            if int(declared) > max_body:
                raise BadRequest(413, f"the body is too large (at most {max_body:,} bytes)")
        chunks, size = [], 0
        async for chunk in request.stream():  # a chunked body has no length: count as it comes
            size += len(chunk)
            if size > max_body:
                raise BadRequest(413, f"the body is too large (at most {max_body:,} bytes)")
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict(request: Request) -> Response:
        try:
            body = await read_body(request)
            digit = await run_in_threadpool(
                digit_from_request, request.headers.get("content-type", ""), body
            )
            result = await run_in_threadpool(model.predict, digit)
        except BadRequest as exc:
            return error(exc.status, str(exc))
        except ClientDisconnect:
            return Response(status_code=400)
        return JSONResponse(
            result.as_dict()
            | {
                "classes": model.class_names,
                "image": np.round(result.image, 3).tolist(),
            }
        )

    async def model_info(request: Request) -> Response:
        return JSONResponse(info)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def not_allowed(request: Request) -> Response:
        return error(405, f"{request.method} is not allowed here: POST an image to /api/predict")

    routes = [
        Route("/", index),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/predict", not_allowed, methods=["GET", "PUT", "DELETE", "PATCH"]),
        Route("/api/info", model_info),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(404, f"nothing at {request.url.path}; the page is at /")

    async def server_error(request: Request, exc: Exception) -> Response:
        return error(500, f"internal error: {type(exc).__name__}")

    return Starlette(routes=routes, exception_handlers={404: not_found, 500: server_error})


# -- the command -----------------------------------------------------------------------------------
def _bind(host: str, port: int) -> socket.socket:
    """Bind here, so a taken port is one clear sentence (uvicorn would log and exit)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another with --port "
            "(or --port 0 for any free one)"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def run_serve(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    from mnistlab.api import load

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535; got {args.port}")
    model = load(args.checkpoint, raw_weights=args.raw_weights)
    sock = _bind(args.host, args.port)
    port = sock.getsockname()[1]
    if args.host in ("0.0.0.0", "::", ""):
        print(
            f"mnistlab: warning: --host {args.host} makes the page reachable from other "
            "machines on the network; use 127.0.0.1 to keep it on this one",
            file=sys.stderr,
        )
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    shown = f"[{shown}]" if ":" in shown else shown
    print(f"mnistlab: serving {model!r}", flush=True)
    print(f"mnistlab: open http://{shown}:{port}/  (Ctrl-C stops)", flush=True)
    config = uvicorn.Config(
        create_app(model), log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, once it has shut down
        pass
    finally:
        sock.close()
    print("mnistlab: server stopped", flush=True)
    return 0
