"""Where a process trains: ``train.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) as a
``torch.device``, for one process and for each local rank of a group alike.

The one resolver: the training loop's single process and ``dist.init_group`` both call it, so a
device name means the same thing whatever mode runs.
"""

from __future__ import annotations

import sys

import torch

from mnistlab.errors import ConfigError, ParallelError


def gpu_shortfall(device: str, workers: int) -> int | None:
    """The number of GPUs when ``device`` would put ``workers`` local ranks on CUDA and there are
    fewer GPUs than that (two ranks on one GPU fail inside NCCL); ``None`` when all is well."""
    if device == "cpu" or workers <= 1 or not torch.cuda.is_available():
        return None
    count = torch.cuda.device_count()
    return count if count < workers else None


def resolve_device(
    name: str, *, local_rank: int | None = None, local_world: int = 1
) -> torch.device:
    """``train.device`` for this process.

    ``auto`` is CUDA when torch sees a GPU, else the CPU. A rank of a process group (``local_rank``
    given, ``local_world`` ranks on this machine) takes its own GPU, ``cuda:LOCAL_RANK``, whatever
    index was named; too few GPUs is an error
    for an explicit CUDA device and, for ``auto``, the CPU for every rank (said once, by local
    rank 0). A name that is no device or CUDA that torch cannot see is a ``ConfigError``.
    """
    try:
        asked = torch.device("cuda" if name == "auto" else name)
    except RuntimeError:
        raise ConfigError(
            f"train.device {name!r} is not a device (use auto, cpu or cuda)"
        ) from None
    if asked.type != "cuda":
        return asked
    if not torch.cuda.is_available():
        if name == "auto":
            return torch.device("cpu")
        raise ConfigError("train.device asks for CUDA but torch sees no CUDA device")
    if local_rank is None:
        return asked
    shortfall = gpu_shortfall(name, local_world)
    if shortfall is not None:
        if name != "auto":
            raise ParallelError(
                f"{local_world} workers on this machine with train.device={name} need "
                f"{local_world} GPUs (one each) and it has {shortfall}: start {shortfall} "
                "per machine (--nproc-per-node), or add --device cpu to train on the CPU (gloo)"
            )
        if local_rank == 0:
            print(
                f"mnistlab: {local_world} workers on this machine but {shortfall} GPU(s) (one "
                "each is needed): training on the CPU with gloo instead",
                file=sys.stderr,
            )
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA's float32 matrix products and cuDNN's convolutions, both at once.

    torch's own defaults differ (products exact, convolutions TF32), which would train LeNet in
    TF32 without anyone asking; a run sets both from ``train.tf32``. Process-wide; harmless on a
    machine without CUDA."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
