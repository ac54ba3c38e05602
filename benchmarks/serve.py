"""``mnistlab serve`` under load and hostile clients, on loopback only, bounded in time.

Starts ``mnistlab serve`` as a user would (a separate process on 127.0.0.1, a free port) and
measures, from this process:

0. one model read in this process, no HTTP, with and without its explanation, on one torch
   thread (the server's choice) and on torch's default of one per core;
1. one client on one keep-alive connection: latency of ``POST /api/predict`` (the page's canvas
   PNG, and a 28x28 JSON array) and of ``POST /api/compare?explain=1`` (what the page sends while
   you draw): p50, p95, max (target: p50 under 5 ms), and the server's CPU time per request
   (user + system, from /proc), which other jobs on the machine hardly change;
2. 64 clients at once, each on its own keep-alive connection: throughput, latency and failed
   requests (target: none);
3. idle connections: all closed by the server after its idle timeout, and how long it took;
4. the connection cap: more connections than ``--max-connections``; how many were refused (503)
   and that the server held no more than its cap;
5. shutdown: Ctrl-C (SIGINT) while clients hold half-sent uploads: seconds until the process
   exits (target: under 5) and that every upload was cut.

    python benchmarks/serve.py                       # trains a small seed-mlp first (seconds)
    python benchmarks/serve.py --model runs/NAME     # any checkpoint spec
    python benchmarks/serve.py --quick --json out.json

It prints the machine (CPU, cores, load average before and after) so figures taken beside other
work can be told from quiet ones. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import platform
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_name  # noqa: E402

HOST = "127.0.0.1"
IDLE_TIMEOUT = 1.0
CAP = 128


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in seconds)
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 2),
        "max_ms": round(ms[-1], 2),
    }


def canvas_png(digit: np.ndarray) -> bytes:
    """A 280x280 PNG of a digit, dark ink on white, as the page's canvas sends it."""
    from PIL import Image

    ink = (255 - np.clip(digit, 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(ink, mode="L").resize((280, 280), Image.Resampling.BILINEAR).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def sample_digit() -> np.ndarray:
    from mnistlab.data import load_splits

    return load_splits("mnist-sample").test.images[0].reshape(28, 28).numpy()


class Served:
    """``mnistlab serve MODEL`` in its own process."""

    def __init__(self, model: str, *extra: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mnistlab", "serve", model, "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "open http://" in line:
                self.port = int(line.split("open http://")[1].split("/")[0].rsplit(":", 1)[1])
                return
        raise SystemExit(f"the server did not start: {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def stop(self) -> float:
        """Ctrl-C; the seconds until the process has exited."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return float("inf")
        return time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_client(port: int, path: str, body: bytes, kind: str, n: int, pid: int) -> dict[str, Any]:
    """``n`` requests on one keep-alive connection; latency seen by the client, and the server's
    CPU time per request (which the other jobs on the machine hardly change)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times, failed, cpu = [], 0, 0.0
    for i in range(n + 20):  # the first 20 warm up
        if i == 20:
            cpu = cpu_seconds(pid)
        started = time.perf_counter()
        conn.request("POST", path, body, {"Content-Type": kind})
        reply = conn.getresponse()
        reply.read()
        if i >= 20:
            times.append(time.perf_counter() - started)
            failed += reply.status != 200
    cpu = cpu_seconds(pid) - cpu
    conn.close()
    return {
        "requests": n,
        "failed": failed,
        **percentiles(times),
        "server_cpu_ms": round(1000 * cpu / n, 2),
    }


async def _client(port: int, request: bytes, n: int, times: list[float]) -> int:
    """One keep-alive client sending ``request`` ``n`` times; returns its failures."""
    failed = 0
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return n
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for _ in range(n):
            started = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            times.append(time.perf_counter() - started)
            failed += not head.startswith(b"HTTP/1.1 200")
    except (OSError, asyncio.IncompleteReadError, StopIteration):
        failed += n - len(times)
    finally:
        writer.close()
    return failed


def many_clients(port: int, body: bytes, kind: str, clients: int, each: int) -> dict[str, Any]:
    request = (
        f"POST /api/predict HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: {kind}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def run() -> tuple[int, list[float], float]:
        times: list[float] = []
        started = time.perf_counter()
        failures = await asyncio.gather(
            *(_client(port, request, each, times) for _ in range(clients))
        )
        return sum(failures), times, time.perf_counter() - started

    failed, times, wall = asyncio.run(run())
    total = clients * each
    return {
        "clients": clients,
        "requests": total,
        "failed": failed,
        "requests_per_s": round((total - failed) / wall, 1),
        **percentiles(times or [float("nan")]),
    }


def _wait_closed(sock: socket.socket, limit: float) -> tuple[float | None, bytes]:
    """Seconds until the server closes ``sock`` (None if it stays open ``limit`` s), and what
    it sent first."""
    started = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None, data
    return time.monotonic() - started, data


def idle_connections(port: int, count: int) -> dict[str, Any]:
    socks = [socket.create_connection((HOST, port), timeout=10) for _ in range(count)]
    closed = [_wait_closed(s, IDLE_TIMEOUT + 10)[0] for s in socks]
    for s in socks:
        s.close()
    times = [t for t in closed if t is not None]
    return {
        "connections": count,
        "closed_by_server": len(times),
        "idle_timeout_s": IDLE_TIMEOUT,
        "slowest_close_s": round(max(times), 2) if times else None,
    }


def connection_cap(port: int, extra: int) -> dict[str, Any]:
    """``CAP + extra`` clients each start a request and wait (its head unfinished, so the
    server's idle timeout does not close them): those past the cap must be answered 503."""
    socks = []
    for _ in range(CAP + extra):
        s = socket.create_connection((HOST, port), timeout=10)
        s.sendall(b"GET /api/info HTTP/1.1\r\n")
        socks.append(s)
    answered: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + 3.0  # the server may still be accepting the last ones
    with selectors.DefaultSelector() as waiting:
        for s in socks:
            waiting.register(s, selectors.EVENT_READ)
        while waiting.get_map() and time.monotonic() < deadline:
            for key, _ in waiting.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    answered[sock] = sock.recv(4096)
                except ConnectionResetError:
                    answered[sock] = b""
                waiting.unregister(sock)
            if len(answered) >= extra and time.monotonic() > deadline - 2.0:
                break
    refused = sum(data.startswith(b"HTTP/1.1 503") for data in answered.values())
    closed_otherwise = len(answered) - refused
    for s in socks:
        s.close()
    return {
        "cap": CAP,
        "opened": len(socks),
        "refused": refused,
        "closed_otherwise": closed_otherwise,
        "held": len(socks) - len(answered),
        "held_within_cap": len(socks) - len(answered) <= CAP,
    }


def shutdown_with_uploads(model: str, uploads: int) -> dict[str, Any]:
    served = Served(model)
    socks = []
    for _ in range(uploads):
        s = socket.create_connection((HOST, served.port), timeout=10)
        s.sendall(
            b"POST /api/predict HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
            b"content-length: 1000000\r\n\r\n" + bytes(500_000)
        )
        socks.append(s)
    time.sleep(0.3)
    seconds = served.stop()
    cut = 0
    for s in socks:
        waited, data = _wait_closed(s, 2)
        cut += waited is not None and (data == b"" or data.startswith(b"HTTP/1.1 503"))
        s.close()
    return {"uploads": uploads, "cut": cut, "exit_s": round(seconds, 2)}


def in_process_reads(model: str, digit: np.ndarray) -> dict[str, Any]:
    """One model read in this process (no HTTP), with and without its explanation, on one
    torch thread (what the server uses) and on one per core (torch's default): ms, best of 5."""
    import timeit

    import torch

    import mnistlab
    from mnistlab.apps.serve.reading import Reader

    reader = Reader(mnistlab.load(model), "bench")
    default = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out: dict[str, Any] = {}
    try:
        for threads in sorted({1, cores or 1}):
            torch.set_num_threads(threads)
            for explain in (False, True):
                runs = timeit.repeat(
                    lambda e=explain: reader.read(digit, explain=e), number=50, repeat=5
                )
                out[f"threads={threads} explain={explain}"] = round(min(runs) / 50 * 1000, 2)
    finally:
        torch.set_num_threads(default)
    return out


def small_model(folder: Path) -> str:
    import mnistlab

    run = folder / "run"
    mnistlab.train("seed-mlp", steps=300, dataset="mnist-sample", device="cpu", run_dir=run)
    return str(run)


def machine() -> dict[str, Any]:
    import uvicorn

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a checkpoint spec (default: train a small seed-mlp)")
    parser.add_argument("--requests", type=int, default=400, help="requests of phase 1")
    parser.add_argument("--clients", type=int, default=64, help="clients of phase 2")
    parser.add_argument("--each", type=int, default=25, help="requests per client, phase 2")
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.each = max(40, args.requests // 4), max(5, args.each // 4)

    before = machine()
    print(
        f"machine: {before['cpu']}; {before['cores']} cores; load average {before['load_average']}"
    )
    print(f"python {before['python']}, uvicorn {before['uvicorn']}; loopback only")
    digit = sample_digit()
    png = canvas_png(digit)
    array = json.dumps({"image": np.round(digit, 3).tolist()}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or small_model(Path(tmp))
        results: dict[str, Any] = {"machine": before, "model": args.model or "seed-mlp, 300 steps"}
        reads = in_process_reads(model, digit)
        results["in_process_read_ms"] = reads
        print("one read in-process (ms): " + ", ".join(f"{k} {v}" for k, v in reads.items()))
        served = Served(
            model,
            "--idle-timeout", str(IDLE_TIMEOUT),
            "--max-connections", str(CAP),
        )  # fmt: skip
        try:
            port, pid = served.port, served.proc.pid
            results["one_client"] = {
                "png": one_client(port, "/api/predict", png, "image/png", args.requests, pid),
                "json": one_client(
                    port, "/api/predict", array, "application/json", args.requests, pid
                ),
                "explain": one_client(
                    port, "/api/compare?explain=1", png, "image/png", args.requests // 2, pid
                ),
            }
            for name, figures in results["one_client"].items():
                print(
                    f"1 client, keep-alive, {name:7s}: p50 {figures['p50_ms']:6.2f} ms  "
                    f"p95 {figures['p95_ms']:6.2f} ms  max {figures['max_ms']:7.2f} ms  "
                    f"failed {figures['failed']}/{figures['requests']}  "
                    f"server CPU {figures['server_cpu_ms']:.2f} ms/request"
                )
            many = many_clients(port, png, "image/png", args.clients, args.each)
            results["many_clients"] = many
            print(
                f"{many['clients']} clients at once, png : {many['requests_per_s']:.0f} req/s  "
                f"p50 {many['p50_ms']:.1f} ms  p95 {many['p95_ms']:.1f} ms  "
                f"failed {many['failed']}/{many['requests']}"
            )
            idle = idle_connections(port, 32)
            results["idle"] = idle
            print(
                f"idle connections: {idle['closed_by_server']}/{idle['connections']} closed by the "
                f"server (idle timeout {IDLE_TIMEOUT:g} s; the last after {idle['slowest_close_s']} s)"
            )
            cap = connection_cap(port, 64)
            results["cap"] = cap
            print(
                f"connection cap {CAP}: opened {cap['opened']}, refused {cap['refused']} (503), "
                f"held {cap['held']} ({'within' if cap['held_within_cap'] else 'OVER'} the cap), "
                f"closed otherwise {cap['closed_otherwise']}"
            )
        finally:
            served.stop()
        down = shutdown_with_uploads(model, 8)
        results["shutdown"] = down
        print(
            f"Ctrl-C with {down['uploads']} half-sent uploads: exited in {down['exit_s']} s, "
            f"{down['cut']}/{down['uploads']} uploads cut"
        )
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average after: {results['load_average_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
