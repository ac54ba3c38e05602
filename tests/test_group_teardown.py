"""A finished parallel run leaves no backend thread behind (a process group of one, in-process).

A worker once aborted at exit now and then (``terminate called without an active exception``,
SIGABRT): the group outlived ``destroy_process_group`` (DDP, DTensor's caches and a torch module's
default arguments kept it), so gloo's C++ threads were still running while the interpreter shut
down. ``DistributedStrategy.close`` must free the group there and then; these tests look at the
threads the process really has.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from .conftest import small_config

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads thread names from /proc"
)


def backend_threads() -> list[str]:
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # a thread that ended meanwhile
            continue
    return sorted(n for n in names if "gloo" in n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("mode", "extra"),
    [("data", []), ("tensor", []), ("pipeline", ["parallel.microbatches=2"])],
)
def test_close_frees_the_group_and_its_threads(monkeypatch, sample_splits, mode, extra):
    import torch.distributed as dist

    from mnistlab.parallel import make_parallel_strategy
    from mnistlab.training import train

    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = small_config(
        "seed-mlp",
        f"parallel.mode={mode}",
        "train.steps=4",
        "train.eval_every=2",
        "train.log_every=2",
        *extra,
    )
    strategy = make_parallel_strategy(config)
    assert strategy is not None
    try:
        train(config, sample_splits, strategy=strategy)
        assert backend_threads(), "the check sees no gloo thread even while the group lives"
        strategy.close()
        assert not dist.is_initialized()
        assert backend_threads() == [], f"{mode}: the group outlived close()"
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
