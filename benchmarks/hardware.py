"""Floors that are the hardware's, for the seed-mlp step (used by ``seed_mlp.py``).

- **Peak FLOP/s**: the core's clock and its fused multiply-add rate, measured by ``peak.c``
  (built here with the system's C compiler, skipped with a note where there is none), times the
  cores torch uses. Their ratio is the FLOPs a core retires per cycle: 32 for two 256-bit FMA
  pipes (AMD Zen 4, whose AVX-512 runs as two halves) or one 512-bit pipe, 64 for two 512-bit
  pipes (Intel's server cores, AMD Zen 5).
- **Memory traffic of the update**: the bytes that L2, SGD and the moving average must move
  per step however they are fused (read and write the weights, read and write the shadows; the
  gradient stays inside the product that makes it), timed at the bandwidth a streaming pass of
  torch reaches on buffers of the same size.

    python benchmarks/hardware.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
N, D, H, C = 100, 784, 500, 10
STEP_FLOP = 2 * N * (D * H + H * C) * 2 + 2 * N * H * C
"""The seed-mlp step's products: the two forward ones, the two weight gradients and the hidden
layer's gradient (the input layer's is never needed): 159.8 MFLOP."""
PARAMETERS = D * H + H + H * C + C


def _flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def peak(cores: int | None = None) -> dict[str, float | int | str]:
    """The clock, the FLOPs per cycle of one core and the peak of ``cores`` cores, measured by
    ``peak.c``; ``{"error": why}`` where it cannot be built or run."""
    cores = cores or torch.get_num_threads()
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return {"error": "no C compiler (cc, gcc, clang) to build benchmarks/peak.c"}
    isa = ["-mavx512f", "-mfma"] if "avx512f" in _flags() else ["-mavx2", "-mfma"]
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "peak"
        built = subprocess.run([cc, "-O2", *isa, "-o", str(exe), str(HERE / "peak.c")],
                               capture_output=True, text=True)  # fmt: skip
        if built.returncode != 0:
            return {"error": f"{cc} could not build peak.c: {built.stderr.strip()[:200]}"}
        out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    measured = json.loads(out.stdout)
    clock, per_core = measured["clock_hz"], measured["fma_flops_per_second"]
    return {
        "clock_ghz": clock / 1e9,
        "flop_per_cycle_per_core": round(per_core / clock),
        "vector_lanes": measured["lanes"],
        "cores": cores,
        "peak_gflops": cores * per_core / 1e9,
        "isa": " ".join(isa),
    }


def streaming_bandwidth(repeats: int = 200) -> float:
    """Bytes per second of the best of ``repeats`` passes ``c = a + b`` over buffers the size of
    the model (three accesses of 4 bytes per element), with torch's threads."""
    a, b, c = torch.rand(PARAMETERS), torch.rand(PARAMETERS), torch.empty(PARAMETERS)
    for _ in range(20):
        torch.add(a, b, out=c)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(10):
            torch.add(a, b, out=c)
        best = min(best, (time.perf_counter() - began) / 10)
    return 3 * 4 * PARAMETERS / best


def update_floor(bandwidth: float) -> dict[str, float]:
    """The update's unavoidable traffic (weights and shadows, each read and written once) and
    its time at ``bandwidth``."""
    traffic = 4 * 4 * PARAMETERS
    return {"bytes": traffic, "bandwidth_gbs": bandwidth / 1e9, "ms": 1e3 * traffic / bandwidth}


def main() -> None:
    p = peak()
    print(json.dumps(p))
    if "error" not in p:
        floor = 1e3 * STEP_FLOP / (p["peak_gflops"] * 1e9)  # type: ignore[operator]
        print(f"products at peak: {STEP_FLOP / 1e6:.1f} MFLOP in {floor:.3f} ms")
    print(json.dumps(update_floor(streaming_bandwidth())))


if __name__ == "__main__":
    sys.exit(main())
