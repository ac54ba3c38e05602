"""Routes torch offers this CPU for the seed-mlp step, measured side by side.

Products (the three that matter: 100x784x500 forward, its weight gradient, and the small second
layer's three), each by several routes:

- forward ``x·W1ᵀ + b1`` (then ReLU): MKL's sgemm as ``F.linear`` calls it (``addmm``, weights
  stored [out, in]); MKL with the weights stored [in, out] (no transposition); MKL's packed
  sgemm (``torch.ops.mkl._mkl_linear``, weights packed once, as inductor's CPU backend does);
  oneDNN's matmul with bias and ReLU in its epilogue (``torch.ops.mkldnn._linear_pointwise``);
  bf16 products (cast each step; not exact, for reference);
- weight gradient ``gᵀ·x``: MKL into a buffer (``mm out=``); MKL added into the weights in place
  (``addmm_``, the folded update); oneDNN on transposed copies;
- with ``--compile``: the whole step (forward, backward, L2, SGD, moving average) compiled by
  ``torch.compile`` (inductor's C++ backend), by default and with ``max_autotune`` (inductor's
  own C++ GEMM templates), against the eager fused step's routes.

Each figure is the best and the median of many short bursts, in rounds that alternate the routes,
so a busy neighbour slows every route alike. Prints microseconds per call and the ratio to the
route mnistlab's ``exact`` step uses.

    python benchmarks/cpu_routes.py [--bursts 200] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

N, D, H, C = 100, 784, 500, 10
Call = Callable[[], object]


def forward_routes() -> dict[str, Call]:
    x, w, b = torch.rand(N, D), torch.randn(H, D) * 0.05, torch.randn(H)
    w_in_out = w.t().contiguous()
    out = torch.empty(N, H)
    routes: dict[str, Call] = {
        "mkl addmm, W [out, in] (F.linear)": lambda: torch.addmm(b, x, w.t(), out=out).relu_(),
        "mkl addmm, W [in, out]": lambda: torch.addmm(b, x, w_in_out, out=out).relu_(),
    }
    try:
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, N)
        routes["mkl packed (_mkl_linear)"] = lambda: torch.ops.mkl._mkl_linear(
            x, packed, w, b, N
        ).relu_()
    except (AttributeError, RuntimeError):
        pass
    if torch.backends.mkldnn.is_available():
        linear = torch.ops.mkldnn._linear_pointwise.default
        routes["onednn, bias+ReLU in epilogue"] = lambda: linear(x, w, b, "relu", [], "")
    bf = torch.bfloat16
    xb = x.to(bf)
    routes["bf16 (weights cast per call)"] = lambda: torch.addmm(b.to(bf), xb, w.to(bf).t()).relu_()
    return routes


def gradient_routes() -> dict[str, Call]:
    x, g, w = torch.rand(N, D), torch.randn(N, H), torch.randn(H, D) * 0.05
    gw = torch.empty(H, D)
    routes: dict[str, Call] = {
        "mkl mm into a buffer (autograd)": lambda: torch.mm(g.t(), x, out=gw),
        "mkl addmm_ into the weights": lambda: w.addmm_(g.t(), x, alpha=-1e-12),
    }
    if torch.backends.mkldnn.is_available():
        linear = torch.ops.mkldnn._linear_pointwise.default
        routes["onednn on transposed copies"] = lambda: linear(
            g.t().contiguous(), x.t().contiguous(), None, "none", [], ""
        )
    return routes


def small_routes() -> dict[str, Call]:
    h, w2, b2, g = torch.rand(N, H), torch.randn(C, H) * 0.05, torch.randn(C), torch.randn(N, C)
    z, dh = torch.empty(N, C), torch.empty(N, H)
    routes: dict[str, Call] = {
        "mkl: forward, d(hidden), weight gradient": lambda: (
            torch.addmm(b2, h, w2.t(), out=z),
            torch.mm(g, w2, out=dh),
            w2.addmm_(g.t(), h, alpha=-1e-12),
        ),
    }
    if torch.backends.mkldnn.is_available():
        linear = torch.ops.mkldnn._linear_pointwise.default
        routes["onednn forward, mkl the other two"] = lambda: (
            linear(h, w2, b2, "none", [], ""),
            torch.mm(g, w2, out=dh),
            w2.addmm_(g.t(), h, alpha=-1e-12),
        )
    return routes


def measure(routes: dict[str, Call], bursts: int, n: int) -> dict[str, tuple[float, float]]:
    """(best, median) microseconds per call, bursts alternating between the routes."""
    for f in routes.values():
        for _ in range(5):
            f()
    times: dict[str, list[float]] = {k: [] for k in routes}
    for r in range(bursts):
        for name in routes if r % 2 == 0 else reversed(list(routes)):
            began = time.perf_counter()
            for _ in range(n):
                routes[name]()
            times[name].append(1e6 * (time.perf_counter() - began) / n)
    return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def show(title: str, results: dict[str, tuple[float, float]]) -> None:
    base = next(iter(results.values()))
    print(title)
    for name, (best, median) in results.items():
        print(
            f"  {name:42s} best {best:8.1f} us ({best / base[0]:4.2f}x)   "
            f"median {median:8.1f} us ({median / base[1]:4.2f}x)"
        )


def step_routes(compile_modes: bool) -> dict[str, Call]:
    """The whole seed-mlp step: the fused engine's routes and, with ``compile_modes``, the step
    compiled by inductor (default and max-autotune)."""
    from mnistlab.config import resolve
    from mnistlab.data import load_splits
    from mnistlab.training import build_run
    from mnistlab.training.dense import FusedDenseEngine

    data = load_splits("mnist-sample", None)
    routes: dict[str, Call] = {}
    for route in ("exact", "mkl", "onednn"):
        run = build_run(resolve("seed-mlp", None, [f"train.route={route}"]), data)
        engine = FusedDenseEngine(run)
        engine._images, engine._labels = run.data.train.images, run.data.train.labels
        idx, loss = torch.arange(N), torch.zeros(())
        routes[f"fused step, route {route}"] = (
            lambda e=engine, r=run, i=idx, v=loss: (e.step_math(i, 0.1, 1e-4, v), r.ema.update())  # type: ignore[union-attr]
        )
    if compile_modes:
        routes |= compiled_steps(data.train.images, data.train.labels)
    return routes


def compiled_steps(images: torch.Tensor, labels: torch.Tensor) -> dict[str, Call]:
    """The step written as plain tensor code and given to ``torch.compile`` whole."""
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(H, D, generator=g) * 0.1, torch.full((H,), 0.1),
              torch.randn(C, H, generator=g) * 0.1, torch.full((C,), 0.1)]  # fmt: skip
    shadows = [p.clone() for p in params]

    def step(w1, b1, w2, b2, s1, t1, s2, t2, idx, lr, w):  # type: ignore[no-untyped-def]
        x, y = images.index_select(0, idx), labels.index_select(0, idx)
        h = torch.relu(torch.addmm(b1, x, w1.t()))
        z = torch.addmm(b2, h, w2.t())
        loss = torch.nn.functional.cross_entropy(z, y)
        gz = (torch.softmax(z, 1) - torch.nn.functional.one_hot(y, C).to(z.dtype)) / N
        gh = (gz @ w2) * (h > 0)
        gw2, gw1 = gz.t() @ h + 1e-4 * w2, gh.t() @ x + 1e-4 * w1
        w1.sub_(lr * gw1), b1.sub_(lr * gh.sum(0)), w2.sub_(lr * gw2), b2.sub_(lr * gz.sum(0))
        for s, p in zip((s1, t1, s2, t2), (w1, b1, w2, b2), strict=True):
            s.lerp_(p, w)
        return loss

    idx, lr, w = torch.arange(N), torch.tensor(0.1), torch.tensor(0.01)
    out: dict[str, Call] = {}
    import torch._inductor.config as inductor

    for name, autotune in (("compiled whole step (inductor)", False),
                           ("compiled, max_autotune (C++ GEMM)", True)):  # fmt: skip
        inductor.max_autotune = autotune
        inductor.max_autotune_gemm_backends = "CPP,ATEN"
        torch._dynamo.reset()
        compiled = torch.compile(step, fullgraph=True, dynamic=False)
        began = time.perf_counter()
        with torch.no_grad():
            compiled(*params, *shadows, idx, lr, w)
        print(f"  {name}: compiled in {time.perf_counter() - began:.1f} s")
        out[name] = lambda c=compiled: c(*params, *shadows, idx, lr, w)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=200)
    parser.add_argument("--compile", action="store_true", help="also the compiled whole step")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    features = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    print("CPU features: " + ", ".join(f for f in features if f in flags))
    show("first layer forward (100x784 by 784x500, bias, ReLU):",
         measure(forward_routes(), args.bursts, 20))  # fmt: skip
    show("first layer weight gradient (500x100 by 100x784):",
         measure(gradient_routes(), args.bursts, 20))  # fmt: skip
    show("second layer's three products:", measure(small_routes(), args.bursts, 50))
    with torch.no_grad():
        show("the whole step:", measure(step_routes(args.compile), max(10, args.bursts // 4), 20))


if __name__ == "__main__":
    main()
