"""Thread choice: the cores this process may use, less the ones other jobs hold."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from mnistlab.config import resolve
from mnistlab.training.state import auto_threads, build_run, busy_cores, cpu_threads


@pytest.mark.slow
def test_a_busy_job_is_seen_and_leaves_its_core():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert busy_cores() >= 1
        assert 1 <= auto_threads() <= max(1, cpu_threads() - 1)
    finally:
        busy.kill()
        busy.wait()


def test_explicit_threads_are_clamped_to_the_cores(sample_splits):
    config = resolve("seed-softmax", None, ["train.steps=1", f"train.threads={cpu_threads()}"])
    before = torch.get_num_threads()
    try:
        build_run(config, sample_splits)
        assert torch.get_num_threads() == cpu_threads()
    finally:
        torch.set_num_threads(before)
