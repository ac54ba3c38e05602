"""``train.device`` resolved once (``parallel.device``) for one process and for each rank; every
parallel mode registered with a strategy."""

from __future__ import annotations

import pytest
import torch

from mnistlab.errors import ConfigError, ParallelError
from mnistlab.parallel.device import resolve_device


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="asks for CUDA"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="'gpu0' is not a device"):
        resolve_device("gpu0")
    fake_gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_each_rank_takes_its_own_gpu(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    fake_gpus(monkeypatch, 2)
    assert resolve_device("auto", local_rank=1, local_world=2) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=0, local_world=1) == torch.device("cuda", 0)
    assert resolve_device("cpu", local_rank=1, local_world=2) == torch.device("cpu")
    fake_gpus(monkeypatch, 1)
    with pytest.raises(ParallelError, match="need 2 GPUs"):
        resolve_device("cuda", local_rank=0, local_world=2)
    assert resolve_device("auto", local_rank=0, local_world=2) == torch.device("cpu")
    assert "training on the CPU with gloo" in capsys.readouterr().err
    assert resolve_device("auto", local_rank=1, local_world=2) == torch.device("cpu")
    assert capsys.readouterr().err == ""  # said once, by local rank 0


def test_every_parallel_mode_has_a_strategy():
    from mnistlab.config.schema import PARALLEL_MODES
    from mnistlab.parallel import STRATEGIES

    assert {"none", *STRATEGIES} == set(PARALLEL_MODES)
