"""Routes torch offers this CPU for the seed-mlp step's matrix products, measured side by side.

The step's five products (100x784x500 forward, its two backward products, the small second
layer's three) through:

- ``mkl fp32``: ``torch.addmm``/``torch.mm`` on float32, what mnistlab uses (MKL's sgemm);
- ``onednn fp32``: the first layer through oneDNN with its weights packed once
  (``torch.mkldnn`` layout, ``mkldnn_linear``), the rest as above;
- ``bf16``: every product in bfloat16 (AVX-512 BF16 / AMX where the CPU has them) with float32
  master weights cast once per step, as a bf16 training step would need;

each with 1 and with all available threads. Prints ms per step and the ratio to ``mkl fp32``.

    python benchmarks/cpu_routes.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

N, D, H, C = 100, 784, 500, 10


def route_fp32() -> Callable[[], None]:
    x, gh, go = torch.rand(N, D), torch.randn(N, H), torch.randn(N, C)
    w1, b1, w2, b2 = torch.randn(H, D), torch.randn(H), torch.randn(C, H), torch.randn(C)
    h, o = torch.empty(N, H), torch.empty(N, C)
    gw1, gw2, gx = torch.empty(H, D), torch.empty(C, H), torch.empty(N, H)

    def step() -> None:
        torch.addmm(b1, x, w1.t(), out=h)
        torch.addmm(b2, h, w2.t(), out=o)
        torch.mm(go.t(), h, out=gw2)
        torch.mm(go, w2, out=gx)
        torch.mm(gh.t(), x, out=gw1)

    return step


def route_onednn() -> Callable[[], None] | None:
    if not torch.backends.mkldnn.is_available():
        return None
    x, gh, go = torch.rand(N, D), torch.randn(N, H), torch.randn(N, C)
    w1, b1, w2, b2 = torch.randn(H, D), torch.randn(H), torch.randn(C, H), torch.randn(C)
    packed_w1, packed_b1 = w1.to_mkldnn(), b1.to_mkldnn()
    o = torch.empty(N, C)
    gw1, gw2, gx = torch.empty(H, D), torch.empty(C, H), torch.empty(N, H)

    def step() -> None:
        h = torch._C._nn.mkldnn_linear(x.to_mkldnn(), packed_w1, packed_b1).to_dense()
        torch.addmm(b2, h, w2.t(), out=o)
        torch.mm(go.t(), h, out=gw2)
        torch.mm(go, w2, out=gx)
        torch.mm(gh.t(), x, out=gw1)

    return step


def route_bf16() -> Callable[[], None]:
    bf = torch.bfloat16
    x = torch.rand(N, D).to(bf)  # the data would be stored in bf16 once
    gh, go = torch.randn(N, H), torch.randn(N, C)
    w1, b1, w2, b2 = torch.randn(H, D), torch.randn(H), torch.randn(C, H), torch.randn(C)

    def step() -> None:
        w1b, w2b = w1.to(bf), w2.to(bf)  # fp32 master weights, cast for the products
        h = torch.addmm(b1.to(bf), x, w1b.t())
        torch.addmm(b2.to(bf), h, w2b.t())
        go_b, gh_b = go.to(bf), gh.to(bf)
        torch.mm(go_b.t(), h).float()
        torch.mm(go_b, w2b).float()
        torch.mm(gh_b.t(), x).float()  # the first layer's gradient back in fp32

    return step


def best_ms(step: Callable[[], None], repeats: int, n: int = 500) -> float:
    for _ in range(100):
        step()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(n):
            step()
        best = min(best, (time.perf_counter() - began) / n)
    return 1e3 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    print(
        "CPU features: "
        + ", ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    )
    routes = {"mkl fp32": route_fp32(), "onednn fp32": route_onednn(), "bf16": route_bf16()}
    cores = len(os.sched_getaffinity(0))
    for threads in sorted({1, cores}):
        torch.set_num_threads(threads)
        base = best_ms(routes["mkl fp32"], args.repeats)
        for name, step in routes.items():
            if step is None:
                print(f"  {threads} thread(s)  {name:12s}: not available in this torch build")
                continue
            ms = base if name == "mkl fp32" else best_ms(step, args.repeats)
            print(
                f"  {threads} thread(s)  {name:12s}: {ms:6.3f} ms/step  ({ms / base:4.2f}x mkl fp32)"
            )


if __name__ == "__main__":
    main()
