"""``mnistlab serve`` against hostile clients: bad bodies, slow and idle connections, floods,
signals during uploads, and the open-file limit.

Every refusal must be a 4xx JSON ``{"error": ..., "reason": ...}`` (never a 500 or a traceback),
and the server must answer normally afterwards. Connection tests run a real uvicorn (the command's
own server and protocol) on 127.0.0.1, port 0, in a thread with short deadlines; signal and
file-limit tests run ``mnistlab serve`` as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason='needs the serve extra: pip install "mnistlab[serve]"')
pytest.importorskip("uvicorn", reason='needs the serve extra: pip install "mnistlab[serve]"')
httpx = pytest.importorskip("httpx", reason="the tests talk to the server with httpx")

SHORT = {"idle_timeout": 0.6, "header_timeout": 1.0, "body_timeout": 1.0, "max_connections": 12}


def _model(preset: str = "seed-mlp", *, nan: bool = False):
    """An untrained model (its readings do not matter here), or one with NaN weights."""
    import torch

    from mnistlab.api import Model
    from mnistlab.config import resolve
    from mnistlab.models import build_model

    config = resolve(preset)
    module = build_model(config.model, num_classes=10, seed=1)
    if nan:
        with torch.no_grad():
            for p in module.parameters():
                p.fill_(float("nan"))
    info = {"preset": preset, "model": config.model.name, "dataset": "mnist", "steps": 0}
    return Model(module, config, info | {"num_classes": 10})


class Live:
    """The command's server (guarded protocol, deadlines, cap) in a thread on a free port."""

    def __init__(self, **limits: float):
        from mnistlab.apps.serve.app import create_app
        from mnistlab.apps.serve.connections import Limits, bind, make_server, serve
        from mnistlab.apps.serve.reading import Reader

        self.limits = Limits(**limits)  # type: ignore[arg-type]
        readers = [
            Reader(_model("seed-mlp"), "mlp"),
            Reader(_model("seed-softmax"), "softmax"),
            Reader(_model("seed-mlp", nan=True), "broken"),
        ]
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server(create_app(readers), self.limits)
        self.thread = threading.Thread(
            target=asyncio.run, args=(serve(self.server, self.sock),), daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return s

    def answers(self) -> bool:
        r = httpx.post(self.url + "/api/predict", json={"image": DIGIT.tolist()}, timeout=10)
        return r.status_code == 200 and r.json()["label"] in range(10)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def live():
    server = Live(**SHORT)
    yield server
    server.stop()


def _stroke_digit() -> np.ndarray:
    digit = np.zeros((28, 28), dtype=np.float32)
    digit[5:23, 13:16] = 1.0  # a "1"
    return digit


DIGIT = _stroke_digit()


def _png(array: np.ndarray | None = None, mode: str = "L", fmt: str = "PNG") -> bytes:
    from PIL import Image

    if array is None:
        array = 255 - (DIGIT * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _float_image_with(value: float) -> bytes:
    """A 32-bit float TIFF holding a digit and one pixel of ``value`` (sent as image/png:
    the decoder reads what the bytes are, not what the header says)."""
    arr = np.zeros((40, 40), dtype=np.float32)
    arr[8:32, 18:22] = 1.0
    arr[0, 0] = value
    return _png(arr, mode="F", fmt="TIFF")


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


ZEROS = np.zeros((28, 28)).tolist()
DOT = np.zeros((28, 28))
DOT[13:15, 13:15] = 1.0
JSON_TYPE = "application/json"

# (name, body, content type, query, status, reason)
HOSTILE = [
    ("JSON nested 20,000 deep", b"[" * 20_000 + b"]" * 20_000, JSON_TYPE, "", 400, "bad-request"),
    (
        "image nested 20,000 deep",
        b'{"image": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        JSON_TYPE,
        "",
        400,
        "bad-request",
    ),
    (
        "preprocess as the string false",
        _json({"image": DIGIT.tolist(), "preprocess": "false"}),
        JSON_TYPE,
        "",
        400,
        "bad-request",
    ),
    (
        "preprocess as 0",
        _json({"image": DIGIT.tolist(), "preprocess": 0}),
        JSON_TYPE,
        "",
        400,
        "bad-request",
    ),
    ("all-zero 28x28", _json({"image": ZEROS}), JSON_TYPE, "", 422, "no-digit"),
    ("all-zero bare 28x28", _json(ZEROS), JSON_TYPE, "", 422, "no-digit"),
    (
        "all-zero 28x28 to preprocess",
        _json({"image": ZEROS, "preprocess": True}),
        JSON_TYPE,
        "",
        422,
        "no-digit",
    ),
    ("a dot, 2x2 pixels", _json({"image": DOT.tolist()}), JSON_TYPE, "", 422, "no-digit"),
    ("blank PNG", _png(np.full((60, 60), 255, np.uint8)), "image/png", "", 422, "no-digit"),
    ("number too large for JSON", b'{"image": [[1e999]]}', JSON_TYPE, "", 400, "bad-request"),
    ("NaN literal", b"[[NaN]]", JSON_TYPE, "", 400, "bad-request"),
    (
        "Infinity literal",
        _json({"image": [[float("inf")] * 28] * 28}),
        JSON_TYPE,
        "",
        400,
        "bad-request",
    ),
    ("integer of 5,000 digits", b"[[" + b"9" * 5000 + b"]]", JSON_TYPE, "", 400, "bad-request"),
    (
        "booleans for pixels",
        _json({"image": [[True] * 28] * 28}),
        JSON_TYPE,
        "",
        400,
        "bad-request",
    ),
    ("strings for pixels", _json({"image": [["1"] * 28] * 28}), JSON_TYPE, "", 400, "bad-request"),
    ("nulls for pixels", _json({"image": [[None] * 28] * 28}), JSON_TYPE, "", 400, "bad-request"),
    (
        "ragged rows",
        _json({"image": [[0.5] * 28] * 27 + [[0.5] * 27]}),
        JSON_TYPE,
        "",
        400,
        "bad-request",
    ),
    ("negative pixels", _json({"image": (DIGIT - 2).tolist()}), JSON_TYPE, "", 400, "bad-request"),
    (
        "pixels above 255",
        _json({"image": (DIGIT * 300).tolist()}),
        JSON_TYPE,
        "",
        400,
        "bad-request",
    ),
    (
        "an unknown field",
        _json({"image": DIGIT.tolist(), "model": "x"}),
        JSON_TYPE,
        "",
        400,
        "bad-request",
    ),
    ("no image field", _json({"preprocess": True}), JSON_TYPE, "", 400, "bad-request"),
    ("a JSON string", _json("digit"), JSON_TYPE, "", 400, "bad-request"),
    ("not UTF-8", b"\xff\xfe[[0]]", JSON_TYPE, "", 400, "bad-request"),
    (
        "array over a million values",
        b'{"preprocess": true, "image": ['
        + b",".join([b"[" + b",".join([b"0"] * 1001) + b"]"] * 1001)
        + b"]}",
        JSON_TYPE,
        "",
        413,
        "too-large",
    ),
    (
        "model index out of range",
        _json({"image": DIGIT.tolist()}),
        JSON_TYPE,
        "?model=9",
        400,
        "bad-request",
    ),
    (
        "model index not a number",
        _json({"image": DIGIT.tolist()}),
        JSON_TYPE,
        "?model=-1",
        400,
        "bad-request",
    ),
    (
        "explain neither 1 nor 0",
        _json({"image": DIGIT.tolist()}),
        JSON_TYPE,
        "?explain=maybe",
        400,
        "bad-request",
    ),
    (
        "a model with NaN weights",
        _json({"image": DIGIT.tolist()}),
        JSON_TYPE,
        "?model=2",
        422,
        "model-output",
    ),
    (
        "NaN weights, explained",
        _json({"image": DIGIT.tolist()}),
        JSON_TYPE,
        "?model=2&explain=1",
        422,
        "model-output",
    ),
    ("not an image", b"hello, this is text" * 10, "image/png", "", 400, "bad-image"),
    ("truncated PNG", _png()[:60], "image/png", "", 400, "bad-image"),
    ("wrong content type", _png(), "text/plain", "", 415, "content-type"),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_bodies_get_a_4xx_json_and_the_server_answers_after(live, case):
    name, body, kind, query, status, reason = case
    headers = {"content-type": kind}
    with httpx.Client(base_url=live.url, timeout=30) as client:
        r = client.post("/api/predict" + query, content=body, headers=headers)
        assert r.status_code == status, f"{name}: {r.status_code} {r.text[:300]}"
        reply = r.json()
        assert reply["reason"] == reason, reply
        assert reply["error"] and "\n" not in reply["error"] and "Traceback" not in reply["error"]
    assert live.answers(), f"the server stopped answering after {name}"


def test_a_float_image_with_an_infinite_pixel_is_read_around_it(live):
    """One bad pixel does not make a picture unreadable: the decoder gives it the picture's
    median (data/images.py), so the digit is read, not refused nor blanked."""
    body = _float_image_with(np.inf)
    r = httpx.post(
        live.url + "/api/predict", content=body, headers={"content-type": "image/png"}, timeout=30
    )
    assert r.status_code == 200, r.text[:300]
    assert np.isfinite(np.asarray(r.json()["image"])).all()


def test_a_broken_model_does_not_hide_the_others_when_comparing(live):
    r = httpx.post(live.url + "/api/compare?explain=1", json={"image": DIGIT.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    readings = r.json()["readings"]
    assert [x["name"] for x in readings] == ["mlp", "softmax", "broken"]
    assert "not finite" in readings[2]["error"] and "label" not in readings[2]
    for good in readings[:2]:
        assert abs(sum(good["probabilities"]) - 1) < 1e-4
        assert np.asarray(good["why"]).shape == (28, 28)
    assert len(readings[0]["units"]) > 0 and "units" not in readings[1]  # the MLP's hidden units


def test_explaining_leaves_the_model_alone():
    """An explanation needs gradients for the input and a hidden layer, never for the weights:
    none may pile up in the model, whatever the number of requests at once."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from mnistlab.apps.serve.reading import Reader

    reader = Reader(_model("seed-mlp"), "mlp")
    weights = [p.detach().clone() for p in reader.module.parameters()]
    first = reader.read(DIGIT, explain=True)
    with ThreadPoolExecutor(8) as pool:
        again = list(pool.map(lambda _: reader.read(DIGIT, explain=True), range(16)))
    assert all(reading == first for reading in again)
    assert all(p.grad is None for p in reader.module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights, reader.module.parameters(), strict=True))


# -- connections -----------------------------------------------------------------------------------
def test_accepted_connections_have_tcp_nodelay(live):
    """Without TCP_NODELAY every keep-alive response after the first waits ~40 ms for the
    client's delayed ACK."""
    with httpx.Client(base_url=live.url, timeout=10) as client:
        assert client.get("/api/info").status_code == 200
        protocols = list(live.server.server_state.connections)
        assert protocols
        for protocol in protocols:
            sock = protocol.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends before closing ``sock``; fails if it is still open after
    ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {seconds} s; got {data[:200]!r}") from None
    return data


def test_an_idle_connection_is_closed(live):
    with live.connect() as s:
        assert _closed_within(s, 8) == b""
    with live.connect() as s:  # also after a response on a kept-alive connection
        s.sendall(b"GET /api/info HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _closed_within(s, 8).startswith(b"HTTP/1.1 200")
    assert live.answers()


def _reply(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_slow_loris_headers_get_408(live):
    """One header byte at a time, never finishing: the header deadline runs from the first
    byte and is not renewed by the trickle."""
    with live.connect() as s:
        s.sendall(b"GET /api/info HTTP/1.1\r\n")
        started = time.monotonic()
        try:
            while time.monotonic() - started < 6:
                s.sendall(b"x")
                time.sleep(0.15)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, reply = _reply(_closed_within(s, 8))
    assert status == 408 and reply["reason"] == "timeout" and "headers" in reply["error"]
    assert live.answers()


def test_a_half_sent_body_gets_408(live):
    with live.connect() as s:
        s.sendall(
            b"POST /api/predict HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
            b"content-length: 50000\r\n\r\n\x89PNG"
        )
        status, reply = _reply(_closed_within(s, 8))
    assert status == 408 and "body" in reply["error"]
    assert live.answers()


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api/info HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 300_000 + b"\r\n\r\n",
        b"POST /api/predict HTTP/1.1\r\nhost: x\r\ncontent-length: 12abc\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # TLS to a plain port
    ],
    ids=["300 kB of headers", "bad content length", "TLS hello"],
)
def test_broken_http_is_a_json_400(live, head):
    with live.connect() as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(head)  # may be refused before the whole head is sent
        data = _closed_within(s, 8)
    if data or len(head) < 100_000:  # a reset may drop the answer to an unread flood
        status, reply = _reply(data)
        assert status == 400 and reply["reason"] == "bad-http"
    assert live.answers()


def test_connections_past_the_cap_are_answered_503_and_closed(live):
    cap = SHORT["max_connections"]
    held = [live.connect() for _ in range(cap)]
    try:
        time.sleep(0.2)
        extra = [live.connect() for _ in range(5)]
        for s in extra:
            status, reply = _reply(_closed_within(s, 5))
            assert status == 503 and reply["reason"] == "busy"
            s.close()
    finally:
        for s in held:
            s.close()
    time.sleep(0.2)
    assert live.answers()


# -- the command: signals and the open-file limit --------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    import mnistlab

    folder = tmp_path_factory.mktemp("hostile") / "run"
    mnistlab.train("seed-softmax", steps=20, dataset="mnist-sample", device="cpu", run_dir=folder)
    return folder


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_server_left_behind():
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _start(*args: str, limit_files: int | None = None) -> tuple[subprocess.Popen, int]:
    def limit() -> None:
        if limit_files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit_files, limit_files))

    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistlab", "serve", *args, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=limit,
    )
    STARTED.append(proc)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "open http://" in line:
            return proc, int(line.split("open http://")[1].split("/")[0].rsplit(":", 1)[1])
    proc.kill()
    raise AssertionError(f"the server did not start: {proc.stderr.read() if proc.stderr else ''}")


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name
)
def test_a_stop_signal_ends_the_server_within_5s_cutting_unfinished_uploads(tiny_run, sig):
    proc, port = _start(str(tiny_run))
    uploads = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(
            b"POST /api/predict HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
            b"content-length: 1000000\r\n\r\n" + bytes(1000)
        )
        uploads.append(s)
    half_head = socket.create_connection(("127.0.0.1", port), timeout=10)
    half_head.sendall(b"POST /api/predict HTTP/1.1\r\nhost:")
    time.sleep(0.3)
    started = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - started
    assert took < 5, f"stopping took {took:.1f} s"
    assert proc.returncode == 0, err
    assert "server stopped" in out and "Traceback" not in err
    for s in [*uploads, half_head]:
        data = _closed_within(s, 2)
        assert data == b"" or _reply(data)[0] == 503
        s.close()


def test_at_the_open_file_limit_there_is_no_flood_of_tracebacks(tiny_run):
    """With 128 file descriptors and 200 clients: the cap fits under the limit, the extra
    clients are refused, stderr stays a few lines, and the server answers once they leave."""
    proc, port = _start(str(tiny_run), limit_files=128)
    clients = []
    try:
        for _ in range(200):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(1.0)
    finally:
        for s in clients:
            s.close()
    time.sleep(0.5)
    r = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=10)
    assert r.status_code == 200
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "Traceback" not in err and len(err) < 2000, err[:2000]


def test_limits_and_a_missing_default_model_are_one_line(monkeypatch, capsys, tiny_run):
    from mnistlab.apps import serve
    from mnistlab.apps.cli import main

    for flag, value in [
        ("--idle-timeout", "0"),
        ("--body-timeout", "-1"),
        ("--max-connections", "0"),
    ]:
        assert main(["serve", str(tiny_run), flag, value]) == 2
        err = capsys.readouterr().err
        assert flag in err and len(err.strip().splitlines()) == 1

    monkeypatch.setattr(serve, "DEFAULT_MODELS", ("pretrained:none-such", "pretrained:nor-this"))
    assert main(["serve"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mnistlab serve runs/NAME" in err
