"""The server's doors: every connection has a deadline, their number a cap, shutdown a bound.

uvicorn's HTTP/1.1 protocol (h11) leaves a connection that sends nothing, or a request's head or
body a byte at a time, open forever, and only times out the wait between two requests. Here each
connection is always in one phase, and each phase but the model's own work has a deadline:

    idle  (no byte of a request yet)        --idle_timeout-->    closed quietly
    head  (request line and headers coming)  --header_timeout-->  408, closed
    body  (headers in, body coming)          --body_timeout-->    408, closed
    app   (the request is in; the app answers)

A head's deadline runs from its first byte and is not reset by later ones (a slow-loris client
trickling a byte a second gets no more time than one that sends nothing). Past
``max_connections`` a new connection is answered 503 and closed at once, so the process never runs
out of file descriptors because of clients; the cap is kept below the open-file limit. Should the
limit still be reached (something else holding descriptors), asyncio's accept loop reports each
failure: those reports become one line per ten seconds instead of a traceback each.

Accepted sockets get TCP_NODELAY: without it, Nagle's algorithm and delayed ACKs hold every
keep-alive response after the first for ~40 ms. (asyncio sets it only on sockets whose protocol
number is IPPROTO_TCP, which is why the listening socket is made with it.)

On Ctrl-C, SIGTERM or SIGHUP the server stops accepting, answers 503 to requests still being
uploaded and closes them, lets requests being answered finish, and stops within
``shutdown_timeout`` whatever clients do. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mnistlab.errors import ConfigError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
RESERVED_FDS = 32
"""File descriptors kept free beside the connection cap (the model, threads, files served)."""
ACCEPT_BATCH = 64
"""The listen backlog, which is also how many connections asyncio accepts in one go before any
of them is refused and closed: the cap leaves room for that many more descriptors."""
WARN_EVERY = 10.0
"""Seconds between two warnings that the process is out of file descriptors."""


@dataclass(frozen=True)
class Limits:
    """How long each phase of a connection may last (seconds), and how many may be open."""

    idle_timeout: float = 5.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 256
    shutdown_timeout: float = 3.0

    def check(self) -> None:
        for name in ("idle_timeout", "header_timeout", "body_timeout", "shutdown_timeout"):
            value = getattr(self, name)
            if not value > 0:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be a positive number of seconds; got {value}")
        if self.max_connections < 1:
            raise ConfigError(f"--max-connections must be at least 1; got {self.max_connections}")


def open_file_limit() -> int:
    """This process's soft limit on open file descriptors."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_files() -> int:
    """File descriptors this process holds now (an estimate where /proc is missing)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64


def connection_cap(wanted: int) -> tuple[int, str | None]:
    """``(cap, note)``: ``wanted`` connections, or fewer where the open-file limit would not
    hold them (then ``note`` says so); a ``ConfigError`` if it leaves almost none."""
    limit = open_file_limit()
    if limit == resource.RLIM_INFINITY:
        return wanted, None
    room = limit - open_files() - RESERVED_FDS - ACCEPT_BATCH
    if room >= wanted:
        return wanted, None
    if room < 8:
        raise ConfigError(
            f"the open-file limit ({limit}) leaves room for {max(room, 0)} connections; "
            "raise it (ulimit -n 1024)"
        )
    return room, (
        f"at most {room} open connections (the open-file limit is {limit}; "
        "raise it with ulimit -n for more)"
    )


def raw_response(status: int, message: str, reason: str) -> bytes:
    """A complete HTTP/1.1 JSON error response that closes the connection, as bytes: for a
    connection the application never saw (refused, timed out, cut at shutdown)."""
    body = json.dumps({"error": message, "reason": reason}).encode()
    phrase = {400: "Bad Request", 408: "Request Timeout", 503: "Service Unavailable"}[status]
    head = (
        f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with TCP_NODELAY, a deadline for every phase, a connection cap and
    a shutdown that cuts unfinished uploads. ``limits`` is set by ``protocol_for``."""

    limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = "new"
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    # -- the connection's life ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self.server_state.connections) >= self.limits.max_connections:
            self._refused = True
            self.transport = transport
            message = (
                f"the server has {self.limits.max_connections} connections open, its limit; "
                "try again shortly"
            )
            transport.write(raw_response(503, message, "busy"))
            transport.close()
            return
        super().connection_made(transport)
        self._update()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._phase = "closed"
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        self._update()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._unset_keepalive_if_required()  # the idle deadline below takes its place
        self._update()

    def send_400_response(self, msg: str) -> None:
        self._cancel()
        self.transport.write(raw_response(400, f"invalid HTTP request: {msg}", "bad-http"))
        self.transport.close()

    def shutdown(self) -> None:
        """Called on every open connection when the server stops."""
        if self._refused:
            return
        if self._current_phase() in ("head", "body"):
            self._cut(503, "the server is shutting down; the request was not finished", "stopping")
        else:
            super().shutdown()

    # -- phases and deadlines ----------------------------------------------------------------------
    def _current_phase(self) -> str:
        if self.transport is None or self.transport.is_closing():
            return "closed"
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return "body" if cycle.more_body else "app"
        if self.conn.their_state is h11.SEND_BODY:  # answered before the body was all in
            return "body"
        if self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]:
            return "idle"
        return "head"

    def _update(self) -> None:
        phase = self._current_phase()
        if phase == self._phase:
            return  # a deadline runs from the start of its phase, whatever arrives meanwhile
        self._phase = phase
        self._cancel()
        timeout = {
            "idle": self.limits.idle_timeout,
            "head": self.limits.header_timeout,
            "body": self.limits.body_timeout,
        }.get(phase)
        if timeout is not None:
            self._deadline = self.loop.call_later(timeout, self._expired, phase)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, phase: str) -> None:
        self._deadline = None
        if phase != self._current_phase():
            return
        if phase == "idle":
            self.transport.close()
        elif phase == "head":
            limit = self.limits.header_timeout
            self._cut(408, f"the request's headers did not arrive within {limit:g} s", "timeout")
        else:
            limit = self.limits.body_timeout
            self._cut(408, f"the request's body did not arrive within {limit:g} s", "timeout")

    def _cut(self, status: int, message: str, reason: str) -> None:
        """Answer ``status`` unless a response has begun, and close; the app, if it is waiting
        for the body, sees the client gone."""
        self._cancel()
        cycle = self.cycle
        started = cycle is not None and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if not started:
            self.transport.write(raw_response(status, message, reason))
        self.transport.close()


def protocol_for(limits: Limits) -> type[GuardedProtocol]:
    """The protocol class uvicorn builds for each connection, with ``limits`` bound."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits})


class AcceptWarnings:
    """The event loop's error handler: a failed ``accept`` for want of file descriptors (which
    asyncio reports once per queued connection, with a traceback each) becomes one line every
    ``WARN_EVERY`` seconds; anything else goes to asyncio's own handler."""

    def __init__(self) -> None:
        self.failures = 0
        self.last = -WARN_EVERY

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        resources = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
        if not (isinstance(exc, OSError) and exc.errno in resources):
            loop.default_exception_handler(context)
            return
        self.failures += 1
        now = time.monotonic()
        if now - self.last >= WARN_EVERY:
            print(
                f"mnistlab: warning: cannot accept connections: {exc.strerror or exc} "
                f"({self.failures} refused); raise the open-file limit (ulimit -n) or lower "
                "--max-connections",
                file=sys.stderr,
                flush=True,
            )
            self.last, self.failures = now, 0


class Server(uvicorn.Server):
    """uvicorn's server, stopped by Ctrl-C, SIGTERM or SIGHUP without re-raising the signal
    afterwards (uvicorn would, which makes SIGTERM kill the process before it says goodbye)."""

    stopped_by: str | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if sys.platform == "win32":  # pragma: no cover - SIGHUP does not exist there
            yield
            return
        try:
            previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        except ValueError:  # not the main thread: whoever runs us stops us
            yield
            return
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, sig: int, frame: Any) -> None:
        self.stopped_by = signal.Signals(sig).name
        self.handle_exit(sig, frame)


def make_server(app: Any, limits: Limits) -> Server:
    """A uvicorn server for ``app`` with the guarded protocol (quiet: warnings only)."""
    config = uvicorn.Config(
        app,
        http=protocol_for(limits),
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        backlog=ACCEPT_BATCH,
        timeout_keep_alive=max(1, round(limits.idle_timeout)),
        timeout_graceful_shutdown=max(1, round(limits.shutdown_timeout)),
    )
    return Server(config)


async def serve(server: Server, sock: socket.socket) -> None:
    """Run ``server`` on the listening ``sock`` until it is told to stop."""
    asyncio.get_running_loop().set_exception_handler(AcceptWarnings())
    await server.serve(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (bound here, so a taken port is one clear sentence). Made with
    protocol IPPROTO_TCP so that asyncio sets TCP_NODELAY on every socket it accepts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another with --port "
            "(or --port 0 for any free one)"
        ) from None
    sock.listen(ACCEPT_BATCH)
    sock.setblocking(False)
    return sock
