"""The real TensorBoard server, on a free 127.0.0.1 port, serves the run's scalars."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from mnistlab.apps.board_cmd import free_port, start_board
from mnistlab.apps.cli import main
from mnistlab.io.plots import read_metrics
from mnistlab.io.tracking import TrackingCallback
from mnistlab.training import train

from .conftest import small_config


def fetch_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_server_serves_the_runs_scalars(sample_splits, tmp_path):
    runs = tmp_path / "runs"
    config = small_config(
        "seed-softmax",
        "train.steps=30",
        "train.log_every=10",
        "train.eval_every=15",
        "tracking.histogram_every=0",
    )
    train(config, sample_splits, callbacks=[TrackingCallback(runs / "r1")])
    expected = {r["step"]: r["loss"] for r in read_metrics(runs / "r1") if "loss" in r}

    board = start_board(runs, port=free_port(), log=tmp_path / "tb.log", wait=90)
    try:
        assert board.url.startswith("http://127.0.0.1:")
        query = urllib.parse.urlencode({"run": "r1", "tag": "train/loss"})
        points = None
        deadline = time.monotonic() + 60  # the first load of the logdir runs in the background
        while time.monotonic() < deadline:
            try:
                points = fetch_json(f"{board.url}data/plugin/scalars/scalars?{query}")
                if len(points) == len(expected):
                    break
            except urllib.error.HTTPError:
                pass
            time.sleep(0.5)
        assert points, f"no scalars from {board.url}; log: {board.log.read_text()[-500:]}"
        served = {step: value for _wall, step, value in points}
        assert sorted(served) == sorted(expected) == [10, 20, 30]
        for step, value in expected.items():
            assert served[step] == pytest.approx(value, rel=1e-6)
        assert "r1" in fetch_json(f"{board.url}data/runs")
    finally:
        board.stop()
    assert board.process.poll() is not None


def test_board_command_rejects_a_missing_folder(tmp_path, capsys):
    assert main(["board", str(tmp_path / "nowhere")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def test_board_refuses_a_port_in_use(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["board", str(tmp_path), "--port", str(port)]) == 1
    err = capsys.readouterr()
    assert f"port {port} on 127.0.0.1 is already in use" in err.err
    assert "TensorBoard at" not in err.out


@pytest.mark.parametrize("host", ["256.1.1.1", "no-such-host.invalid"])
def test_board_bad_host_is_one_line(tmp_path, capsys, host):
    assert main(["board", str(tmp_path), "--host", host]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mnistlab: error: --host {host} is not a valid address")
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_board_stops_tensorboard_on_sigterm(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistlab", "board", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # printed once TensorBoard answers
        assert "TensorBoard at" in line, proc.stderr.read()
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1
        child = int(children[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("TensorBoard outlived `mnistlab board` after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
