"""The Starlette app: the page, its static files, and the JSON endpoints.

    GET  /                      the page (apps/static/index.html)
    GET  /api/info              the models: {"models": [...]}, and the first one's fields at the top
    POST /api/predict           a reading by one model (?model=I, default 0; ?explain=1 adds "why")
    POST /api/compare           the same drawing read by every model: {"image", "readings": [...]}

A reading is ``{"label", "class", "probability", "probabilities", "classes"}`` (plus ``"why"``,
a 28x28 map, and for an MLP ``"units"``, when explained); ``/api/predict`` adds ``"image"``, the
28x28 digit the model saw. Every refusal is ``{"error": "...", "reason": "..."}`` with a 4xx status
chosen by the error's type (``status_of``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mnistlab.apps.serve.inputs import MAX_BODY, RequestError, digit_from_request
from mnistlab.apps.serve.reading import ModelOutputError, Reader
from mnistlab.errors import DataError, MnistlabError, NoDigitError


def status_of(exc: MnistlabError) -> tuple[int, str]:
    """``(HTTP status, reason)`` for an error, by its type."""
    if isinstance(exc, RequestError):
        return exc.status, exc.reason
    if isinstance(exc, NoDigitError):
        return 422, "no-digit"
    if isinstance(exc, ModelOutputError):
        return 422, "model-output"
    if isinstance(exc, DataError):  # ImageError, and the image code's other refusals
        return 400, "bad-image"
    return 500, "internal"


def _flag(request: Any, name: str) -> bool:
    value = request.query_params.get(name, "0").lower()
    if value not in ("0", "1", "true", "false"):
        raise RequestError(400, f"?{name}= takes 1 or 0; got {value[:20]!r}")
    return value in ("1", "true")


def create_app(models: Any | Sequence[Any], *, max_body: int = MAX_BODY) -> Any:
    """The Starlette app serving ``models``: one ``mnistlab.api.Model``, a ``Reader``, or a list
    of them (read side by side on the page)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from mnistlab.apps.serve import STATIC

    items = list(models) if isinstance(models, list | tuple) else [models]
    if not items:
        raise ValueError("create_app needs at least one model")
    readers = [
        m if isinstance(m, Reader) else Reader(m, f"model {i + 1}") for i, m in enumerate(items)
    ]
    infos = [r.info() for r in readers]
    info = infos[0] | {"models": infos}

    def error(status: int, message: str, reason: str, *, close: bool = False) -> JSONResponse:
        headers = {"connection": "close"} if close else None
        return JSONResponse({"error": message, "reason": reason}, status, headers=headers)

    async def read_body(request: Request) -> bytes:
        too_large = RequestError(
            413,
            f"the body is too large (at most {max_body:,} bytes)",
            reason="too-large",
            close=True,
        )
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise RequestError(400, "bad Content-Length header", close=True)
            if int(declared) > max_body:
                raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():  # a chunked body has no length: count as it comes
            size += len(chunk)
            if size > max_body:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def which(request: Request) -> Reader:
        text = request.query_params.get("model", "0")
        if not text.isdigit() or int(text) >= len(readers):
            raise RequestError(
                400, f"?model= must be a model's index, 0 to {len(readers) - 1}; got {text[:20]!r}"
            )
        return readers[int(text)]

    def seen(digit: np.ndarray) -> list[Any]:
        return np.round(digit, 3).tolist()

    # Decoding, preprocessing and the models run in one trip to a worker thread per request: on
    # busy cores every hand-over between threads waits for the scheduler.
    async def predict(request: Request) -> Response:
        reader, explain = which(request), _flag(request, "explain")
        body, kind = await read_body(request), request.headers.get("content-type", "")

        def work() -> dict[str, Any]:
            digit = digit_from_request(kind, body)
            return reader.read(digit, explain=explain) | {"image": seen(digit)}

        return JSONResponse(await run_in_threadpool(work))

    async def compare(request: Request) -> Response:
        explain = _flag(request, "explain")
        body, kind = await read_body(request), request.headers.get("content-type", "")

        def work() -> dict[str, Any]:
            digit = digit_from_request(kind, body)
            readings = []
            for i, reader in enumerate(readers):
                try:
                    reading = reader.read(digit, explain=explain)
                except ModelOutputError as exc:  # one broken model must not hide the others
                    reading = {"error": str(exc)}
                readings.append({"model": i, "name": reader.name} | reading)
            return {"image": seen(digit), "readings": readings}

        return JSONResponse(await run_in_threadpool(work))

    async def model_info(request: Request) -> Response:
        return JSONResponse(info)

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def favicon(request: Request) -> Response:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    async def not_allowed(request: Request) -> Response:
        return error(405, f"{request.method} is not allowed here: POST an image", "method")

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MnistlabError)
        status, reason = status_of(exc)
        return error(status, str(exc), reason, close=getattr(exc, "close", False))

    async def gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=400)  # the client left: nobody reads this

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(404, f"nothing at {request.url.path}; the page is at /", "not-found")

    async def server_error(request: Request, exc: Exception) -> Response:
        return error(500, f"internal error: {type(exc).__name__}", "internal")

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/compare", compare, methods=["POST"]),
        Route("/api/predict", not_allowed, methods=["GET", "PUT", "DELETE", "PATCH"]),
        Route("/api/compare", not_allowed, methods=["GET", "PUT", "DELETE", "PATCH"]),
        Route("/api/info", model_info),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {
        MnistlabError: refused,
        ClientDisconnect: gone,
        404: not_found,
        500: server_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers)  # type: ignore[arg-type]
