"""Which route the fused dense step takes on this machine (``train.route``).

The fused dense step (``training/dense.py``) computes the same training four ways:

- ``exact``: the kernels autograd itself calls, three passes over the weights after the
  products (L2 into the gradient, SGD, the moving average): bit-equal to autograd on the CPU;
- ``mkl``: the same products (MKL's sgemm through torch), with SGD folded into the
  weight-gradient product: ``W ← W - lr·l2·W`` (one pass), then ``W ← W - lr·gᵀx`` in place
  (``addmm_``), so the weight gradient is never written out (seven accesses of the weights'
  size a step become four). The decay stays its own term: a product's ``beta = 1 - lr·l2``
  would round to float32's spacing near 1 and bias every step's decay by up to 0.3%;
- ``onednn``: as ``mkl``, with the forward products through oneDNN and the bias and ReLU in
  their epilogue;
- ``trimmed`` (``training/trimmed.py``): as ``onednn``, with the first layer's two large
  products run only over the pixels the batch inks (a pixel that is 0 in every image of the
  batch adds nothing to either), and every parameter, gradient and shadow in one flat buffer.

The last three agree with ``exact`` to float32's rounding (their products sum in another order),
not bit for bit. ``auto`` picks one by a fixed rule at run start (so two runs on one machine
give the same digits) and a checkpoint records it, so a resume goes on by the same route.
The default is ``exact`` (``config/schema.py``); the others are opt-in.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mnistlab.config.schema import DENSE_ROUTES
from mnistlab.errors import ConfigError

if TYPE_CHECKING:
    from mnistlab.training.state import Run


@functools.cache
def _cpu_flags() -> tuple[str, frozenset[str]]:
    """The CPU's vendor and flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    vendor, flags = "", frozenset[str]()
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            vendor = value.strip()
        elif key.strip() == "flags":
            flags = frozenset(value.split())
    return vendor, flags


def onednn_ready(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the ``onednn`` route can run: oneDNN in this torch build, float32 on the CPU."""
    return device.type == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available()


def auto_route(
    device: torch.device, dtype: torch.dtype, *, hidden: bool = True, threads: int = 1
) -> str:
    """The route ``train.route=auto`` takes on this machine, by a fixed rule (so two runs on one
    machine compute the same digits): on CUDA ``exact`` (the only one measured there); on a
    CPU in float32, for a model with a hidden layer trained on one thread, ``trimmed`` (0.86×
    ``onednn``'s step over a whole seed-mlp run there, on an AMD EPYC, Zen 4; at two threads
    it was not faster: docs/speed.md). Otherwise: on a CPU with AVX-512 whose vendor is not
    Intel, ``onednn`` — MKL's sgemm runs its AVX2 kernels there (seen on an AMD EPYC, Zen 4),
    oneDNN its AVX-512 ones; elsewhere ``mkl``."""
    if device.type != "cpu":
        return "exact"
    if hidden and threads == 1 and dtype == torch.float32:
        return "trimmed"
    vendor, flags = _cpu_flags()
    if onednn_ready(device, dtype) and "avx512f" in flags and vendor != "GenuineIntel":
        return "onednn"
    return "mkl"


def choose_route(run: Run) -> str:
    """``train.route`` resolved for this run: as set, or for ``auto`` the route a resumed
    checkpoint recorded (so the resume computes what the uninterrupted run would), else
    ``auto_route``."""
    setting = run.config.train.route
    device = run.strategy.device
    dtype = run.data.train.images.dtype
    if setting not in DENSE_ROUTES:
        raise ConfigError(f"train.route must be one of {', '.join(DENSE_ROUTES)}; got {setting!r}")
    if setting == "onednn" and not onednn_ready(device, dtype):
        raise ConfigError(
            f"train.route=onednn needs float32 on the CPU with oneDNN in torch (here: {device}, "
            f"{dtype}, oneDNN {'available' if torch.backends.mkldnn.is_available() else 'absent'})"
            "; use train.route=auto"
        )
    if setting == "trimmed" and device.type != "cpu":
        raise ConfigError(
            f"train.route=trimmed runs on the CPU (here: {device}); use train.route=auto"
        )
    if setting != "auto":
        return setting
    saved = run.dense_route
    if saved in ("exact", "mkl") or (saved == "onednn" and onednn_ready(device, dtype)):
        return saved
    if saved == "trimmed" and device.type == "cpu":
        return saved
    model = run.strategy.model
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules()) if model else 0
    chosen = auto_route(device, dtype, hidden=linears > 1, threads=torch.get_num_threads())
    if saved and saved != chosen:
        print(
            f"mnistlab: the checkpoint trained with train.route={saved}, which cannot run here; "
            f"going on with {chosen} (the last digits will differ from an uninterrupted run)",
            file=sys.stderr,
        )
    return chosen
