"""The command line at its edges: Ctrl-C while it is still importing, and streams that cannot
encode what mnistlab prints (``LC_ALL=C``, ``PYTHONIOENCODING=ascii``). One line and the right
exit status, never a traceback."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnistlab.apps import cli

SRC = str(Path(cli.__file__).resolve().parents[2])


def env(**extra: str) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": SRC} | extra


def test_ctrl_c_while_the_subcommands_import_is_one_line(monkeypatch, capsys):
    def interrupted_import(name: str):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted_import)
    monkeypatch.setattr(cli, "_quiet_shutdown", lambda: None)  # leave pytest's SIGINT alone
    try:
        status = cli.main(["data", "list"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main(): a traceback for the person")
    assert status == 130
    assert capsys.readouterr().err == "mnistlab: interrupted\n"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches /proc/PID/maps")
@pytest.mark.timeout(120)
def test_a_real_ctrl_c_during_the_torch_import(tmp_path):
    """SIGINT as soon as torch's library is mapped, i.e. while ``import torch`` runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistlab", "data", "list"],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60
    try:
        while "libtorch" not in maps.read_text(errors="replace"):
            assert proc.poll() is None, "the command ended before torch was imported"
            assert time.monotonic() < deadline, "torch was never imported"
            time.sleep(0.005)
    except FileNotFoundError:
        pytest.fail("the command ended before torch was imported")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "mnistlab: interrupted"


def test_an_ascii_stream_writes_what_it_cannot_encode():
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    stream.reconfigure(errors=getattr(cli, "STREAM_ERRORS", "strict"))
    undecodable = os.fsdecode(b"/data/\xff")  # a file name that was not UTF-8
    stream.write(f"99.31% ± 0.05 — ok {undecodable} é 中\n")
    stream.flush()
    assert raw.getvalue() == b"99.31% +/- 0.05 -- ok /data/\\xff \\xe9 \\u4e2d\n"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_data_info_under_an_ascii_locale():
    done = subprocess.run(
        [sys.executable, "-m", "mnistlab", "data", "info", "mnist"],
        env=env(LC_ALL="C", PYTHONIOENCODING="ascii"),
        capture_output=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"CC BY-SA 3.0 -- Yann LeCun" in done.stdout


def test_a_ctrl_c_that_a_library_swallows_still_stops_the_start():
    """The guard around the slow imports: a KeyboardInterrupt that some code caught and dropped
    is raised again when the block ends, so the command stops (exit 130) instead of running on."""
    from mnistlab.apps.cli import _ctrl_c_noted

    before = signal.getsignal(signal.SIGINT)  # earlier tests may have left SIG_IGN
    with pytest.raises(KeyboardInterrupt), _ctrl_c_noted():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here and raises
        except KeyboardInterrupt:
            pass  # what a careless library does
    assert signal.getsignal(signal.SIGINT) == before  # put back
    with _ctrl_c_noted():
        pass  # no Ctrl-C: nothing raised
