"""Downloads against a real local HTTP server with misbehaving mirrors (127.0.0.1 only)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mnistlab.data.locate import SAMPLE_DIR, download, locate
from mnistlab.data.registry import DATASETS, DatasetSpec
from mnistlab.data.verify import load_arrays
from mnistlab.errors import DataError

# The bundled sample, registered under another name and made downloadable.
SPEC: DatasetSpec = dataclasses.replace(
    DATASETS["mnist-sample"], name="served-sample", bundled=False, mirrors=()
)
FILES = {fs.filename: (SAMPLE_DIR / fs.filename).read_bytes() for fs in SPEC.files}


class Handler(BaseHTTPRequestHandler):
    """/404/F answers 404; /corrupt/F right size, wrong bytes; /drop/F dies halfway; /good/F works;
    /slow/F works after 0.3 s (so that concurrent downloads overlap)."""

    requests: list[str] = []
    lock = threading.Lock()

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        with self.lock:
            self.requests.append(self.path)
        _, kind, name = self.path.split("/", 2)
        body = FILES.get(name)
        if kind == "404" or body is None:
            self.send_error(404, "Not Found")
            return
        if kind == "slow":
            time.sleep(0.3)
        if kind == "corrupt":
            body = bytes(b ^ 0x55 for b in body[:64]) + body[64:]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True  # the server closes the socket mid-body
            return
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    Handler.requests = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MNISTLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("MNISTLAB_SYSTEM_DATA", str(tmp_path / "system"))


def mirrors(base: str, *kinds: str) -> list[str]:
    return [f"{base}/{k}/" for k in kinds]


def test_bad_mirrors_then_good_one(server: str, tmp_path: Path) -> None:
    calls: list[tuple[str, int, int | None]] = []
    dest = tmp_path / "dest"
    located = download(
        SPEC,
        dest,
        mirrors=mirrors(server, "404", "corrupt", "drop", "good"),
        progress=lambda *a: calls.append(a),
    )
    assert located.source == "download" and located.directory == dest
    # no temp files left; the lock file stays (removing a lock file others may hold is a race)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*FILES, ".download.lock"])
    for name, body in FILES.items():
        assert (dest / name).read_bytes() == body
    # Each file tried every mirror in order before the good one.
    expected = [
        f"/{k}/{fs.filename}" for fs in SPEC.files for k in ("404", "corrupt", "drop", "good")
    ]
    assert Handler.requests == expected
    for name, body in FILES.items():
        last = [c for c in calls if c[0] == name][-1]
        assert last == (name, len(body), len(body))
    arrays = load_arrays(located)
    assert arrays["train_images"].shape == (4000, 28, 28)


def test_only_bad_mirrors_fail_cleanly(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as exc:
        download(SPEC, dest, mirrors=mirrors(server, "404", "corrupt", "drop"))
    msg = str(exc.value)
    for fs in SPEC.files:
        assert fs.filename in msg
    assert "HTTP 404" in msg
    assert "md5" in msg and "corrupt file" in msg
    assert "connection dropped" in msg
    for kind in ("404", "corrupt", "drop"):
        assert f"{server}/{kind}/" in msg
    assert [p.name for p in dest.iterdir()] == [".download.lock"]  # no data or temp files


def test_locate_downloads_into_cache_and_reuses_it(server: str, tmp_path: Path) -> None:
    located = locate(SPEC, mirrors=mirrors(server, "good"))
    cache = tmp_path / "xdg" / "mnistlab" / "served-sample"
    assert (located.source, located.directory) == ("download", cache)
    n = len(Handler.requests)
    again = locate(SPEC, mirrors=mirrors(server, "good"))
    assert again.source == "cache" and len(Handler.requests) == n


def test_download_skips_files_already_verified(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    first = SPEC.files[0].filename
    (dest / first).write_bytes(FILES[first])
    download(SPEC, dest, mirrors=mirrors(server, "good"))
    assert f"/good/{first}" not in Handler.requests
    assert len(Handler.requests) == 3


def test_locate_failure_is_one_message(server: str, tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        locate(SPEC, mirrors=mirrors(server, "404"))
    msg = str(exc.value)
    assert "Looked in" in msg and "Download" in msg and "HTTP 404" in msg
    assert str(tmp_path / "xdg" / "mnistlab" / "served-sample") in msg
    assert str(tmp_path / "system" / "served-sample") in msg
    assert not (tmp_path / "xdg" / "mnistlab" / "served-sample" / SPEC.files[0].filename).exists()


def test_unreachable_mirror(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="cannot connect"):
        download(SPEC, tmp_path / "d", mirrors=[f"http://127.0.0.1:{port}/"])


def _download_into(dest: str, mirror: str) -> None:
    download(SPEC, dest, mirrors=[mirror])


def test_concurrent_downloads_take_turns(server: str, tmp_path: Path) -> None:
    """Two processes (the ranks of a group) download into one folder: one fetches each file, the
    other waits on the lock, then finds the files verified and fetches nothing."""
    dest = tmp_path / "shared"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_download_into, args=(str(dest), f"{server}/slow/")) for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(Handler.requests) == sorted(f"/slow/{fs.filename}" for fs in SPEC.files)
    assert load_arrays(locate(SPEC, dest))["train_images"].shape[0] == 4000
    assert not list(dest.glob("*.tmp")) and not list(dest.glob(".*.tmp"))
