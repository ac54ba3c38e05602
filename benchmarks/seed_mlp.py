"""Speed of mnistlab's seed-mlp step, against the hardware's floors, the JAX port and a bare loop.

Floors (``hardware.py``), each a lower bound of a different kind:

- *peak*: the step's 159.8 MFLOP of products at the CPU's peak FLOP/s (clock x FMA rate x
  cores, measured);
- *best GEMM route*: the step's five products alone, by the fastest route found for these shapes
  (MKL's sgemm as autograd calls it; MKL with the update folded into the weight-gradient
  product; oneDNN's forward with bias and ReLU in its epilogue): best of many short bursts;
- *update traffic*: the bytes L2, SGD and the moving average must move however they are fused
  (weights and shadows, each read and written once), at the streaming bandwidth torch reaches
  on buffers of that size.

Then, interleaved round by round in one process (so a drift in the machine's speed hits all
alike): the ``seed-mlp`` preset for ``--steps`` steps through ``mnistlab.training.train`` by each
route of its fused step (``train.route``: exact, mkl, onednn; validation every 500 steps
included), through autograd (``train.fused=false``), and the loop a PyTorch user writes by hand.
With ``--jax PYTHON`` (an interpreter that has jax and optax), the JAX port's warm step runs in
its own process, in the same rounds, and each route's time is divided by JAX's in the same round.

    python benchmarks/seed_mlp.py --steps 2000 --repeats 5
    python benchmarks/seed_mlp.py --steps 1000 --repeats 9 --jax /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import add_run_args, start  # noqa: E402
from hardware import STEP_FLOP, peak, streaming_bandwidth, update_floor  # noqa: E402
from mnistlab.config import resolve  # noqa: E402
from mnistlab.data import Batcher, load_splits  # noqa: E402
from mnistlab.models import build_model  # noqa: E402
from mnistlab.training import train  # noqa: E402

ROUTES = ("exact", "mkl", "onednn", "trimmed")
N, D, H, C = 100, 784, 500, 10


def bare_loop(data, steps: int, seed: int) -> float:
    """The plain way: nn modules, autograd, torch.optim.SGD, in-place EMA. Returns seconds."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 500), torch.nn.ReLU(), torch.nn.Linear(500, 10)
    )
    start = build_model(resolve("seed-mlp").model, seed=seed)  # same initial weights as mnistlab
    with torch.no_grad():
        for p, q in zip(model.parameters(), start.parameters(), strict=True):
            p.copy_(q)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    shadows = [p.detach().clone() for p in model.parameters()]
    batches = Batcher(len(data.train), 100, seed=seed + 1)
    x_all, y_all = data.train.images, data.train.labels
    began = time.perf_counter()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = 0.1 * 0.99 ** (step / 550)
        idx = batches.next_indices()
        x, y = x_all[idx], y_all[idx]
        logits = model(x)
        l2 = model[0].weight.pow(2).sum() / 2 + model[2].weight.pow(2).sum() / 2
        loss = F.cross_entropy(logits, y) + 1e-4 * l2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            d = min(0.99, (1 + step) / (10 + step))
            for s, p in zip(shadows, model.parameters(), strict=True):
                s.mul_(d).add_(p, alpha=1 - d)
        if (step + 1) % 500 == 0 or step + 1 == steps:
            with torch.no_grad():
                w1, b1, w2, b2 = shadows
                v = torch.relu(data.validation.images @ w1.T + b1) @ w2.T + b2
                _ = (v.argmax(1) == data.validation.labels).float().mean().item()
    return time.perf_counter() - began


def product_routes(prefix: int = D) -> dict[str, Callable[[], None]]:
    """The step's five products by each route, into buffers made once where the route allows;
    with ``prefix`` < 784, also the ``trimmed`` route's (the first layer's two over that many
    pixels: the data's mean prefix)."""
    x, gh, go = torch.rand(N, D), torch.randn(N, H), torch.randn(N, C)
    w1, b1 = torch.randn(H, D) * 0.05, torch.randn(H)
    w2, b2 = torch.randn(C, H) * 0.05, torch.randn(C)
    h, o = torch.empty(N, H), torch.empty(N, C)
    gw1, gw2, gx = torch.empty(H, D), torch.empty(C, H), torch.empty(N, H)

    def autograd_calls() -> None:  # the exact route: the calls autograd makes
        torch.addmm(b1, x, w1.t(), out=h)
        torch.addmm(b2, h, w2.t(), out=o)
        torch.mm(go.t(), h, out=gw2)
        torch.mm(go, w2, out=gx)
        torch.mm(gh.t(), x, out=gw1)

    def folded() -> None:  # the mkl route: the weight gradients go into the weights
        torch.addmm(b1, x, w1.t(), out=h)
        torch.addmm(b2, h, w2.t(), out=o)
        torch.mm(go, w2, out=gx)
        w2.addmm_(go.t(), h, beta=1.0, alpha=-1e-12)
        w1.addmm_(gh.t(), x, beta=1.0, alpha=-1e-12)

    routes = {"mkl, as autograd calls it": autograd_calls, "mkl, update folded": folded}
    if torch.backends.mkldnn.is_available():
        linear = torch.ops.mkldnn._linear_pointwise.default

        def onednn() -> None:  # the onednn route: forward through oneDNN, bias and ReLU fused
            hidden = linear(x, w1, b1, "relu", [], "")
            linear(hidden, w2, b2, "none", [], "")
            torch.mm(go, w2, out=gx)
            w2.addmm_(go.t(), hidden, beta=1.0, alpha=-1e-12)
            w1.addmm_(gh.t(), x, beta=1.0, alpha=-1e-12)

        routes["onednn forward, mkl folded backward"] = onednn
        if prefix < D:
            w1t = torch.randn(D, H) * 0.05

            def trimmed() -> None:  # the trimmed route: [pixels, units] rows, a prefix of them
                inked, rows = x[:, :prefix].contiguous(), w1t[:prefix]
                hidden = linear(inked, rows.t(), b1, "relu", [], "")
                linear(hidden, w2, b2, "none", [], "")
                torch.mm(go, w2, out=gx)
                w2.addmm_(go.t(), hidden, beta=1.0, alpha=-1e-12)
                rows.addmm_(inked.t(), gh, beta=1.0, alpha=-1e-12)

            routes[f"trimmed to {prefix} pixels (the mean)"] = trimmed
    return routes


def mean_prefix(data, steps: int, seed: int) -> int:
    """The mean prefix the ``trimmed`` route's first-layer products run over on this data."""
    from mnistlab.training.trimmed import pixel_order, prefix_lengths

    order, reach = pixel_order(data.train.images)
    batcher = Batcher(len(data.train), 100, seed=seed + 1)
    batches = torch.stack([batcher.next_indices() for _ in range(steps)])
    lengths = prefix_lengths(reach, batches, D)
    return round(sum(lengths) / len(lengths))


def burst_ms(step: Callable[[], None], bursts: int, n: int = 20) -> tuple[float, float]:
    """(best, median) ms of ``bursts`` bursts of ``n`` calls: the best is the one nothing
    else interrupted."""
    for _ in range(10):
        step()
    times = []
    for _ in range(bursts):
        began = time.perf_counter()
        for _ in range(n):
            step()
        times.append(1e3 * (time.perf_counter() - began) / n)
    return min(times), statistics.median(times)


class JaxSteps:
    """The JAX port's warm steps, in a process of the given interpreter, timed on request."""

    def __init__(self, python: str, dataset: str, data_dir: str | None, threads: int):
        cmd = [python, str(HERE / "frameworks.py"), "--run", "jax", "--serve"]
        cmd += ["--programs", "mlp", "--dataset", dataset, "--threads", str(threads)]
        cmd += ["--data-dir", data_dir] if data_dir else []
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}
        self.child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True, env=env)  # fmt: skip
        assert self.child.stdout is not None
        ready = self.child.stdout.readline().strip()
        if ready != "ready":
            raise SystemExit(f"--jax {python}: the JAX port did not start (said {ready!r})")

    def seconds(self, steps: int) -> float:
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write(f"{steps}\n")
        self.child.stdin.flush()
        return float(self.child.stdout.readline())

    def close(self) -> None:
        if self.child.stdin is not None:
            self.child.stdin.close()
        self.child.wait(timeout=60)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.3f} ms ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, steps=2000, repeats=3)
    parser.add_argument("--jax", metavar="PYTHON", help="an interpreter with jax and optax")
    parser.add_argument("--bursts", type=int, default=200, help="bursts per product route")
    parser.add_argument("--no-bare", action="store_true", help="leave out the bare PyTorch loop")
    args = parser.parse_args()
    dataset, data_dir = start(args)
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    # -- the floors ----------------------------------------------------------------------------
    hw = peak()
    if "error" in hw:
        print(f"peak FLOP/s: not measured ({hw['error']})")
        peak_ms = None
    else:
        peak_ms = 1e3 * STEP_FLOP / (float(hw["peak_gflops"]) * 1e9)
        print(
            f"peak: {hw['cores']} cores x {float(hw['clock_ghz']):.2f} GHz x "
            f"{hw['flop_per_cycle_per_core']} FLOP/cycle = {float(hw['peak_gflops']):.0f} GFLOP/s;"
            f" the step's {STEP_FLOP / 1e6:.1f} MFLOP of products take {peak_ms:.3f} ms at peak"
        )
    data = load_splits(dataset, data_dir)
    prefix = mean_prefix(data, args.steps, 1)
    print(f"trimmed route: a batch's first-layer products run over {prefix} of {D} pixels "
          f"(mean over the run's {args.steps} batches)")  # fmt: skip
    products = {name: burst_ms(f, args.bursts) for name, f in product_routes(prefix).items()}
    for name, (best, median) in products.items():
        print(f"  five products, {name:38s}: best {best:.3f} ms, median {median:.3f} ms")
    # The dense problem's floor: the fastest route over all 784 pixels (the trimmed products do
    # less work, on this data only, and are printed beside it).
    dense = {k: v for k, v in products.items() if not k.startswith("trimmed")}
    gemm_name, (gemm_ms, _) = min(dense.items(), key=lambda kv: kv[1][0])
    traffic = update_floor(streaming_bandwidth())
    print(
        f"update traffic: {traffic['bytes'] / 1e6:.2f} MB a step at "
        f"{traffic['bandwidth_gbs']:.0f} GB/s = {traffic['ms']:.3f} ms"
    )

    # -- the steps, interleaved ----------------------------------------------------------------
    # Every subject on the same thread count: mnistlab's own rule (train.threads=0) would leave
    # the cores a neighbour holds at start, and the JAX port's XLA takes all of them.
    threads = torch.get_num_threads()
    print(f"threads: {threads} for every subject (--threads)")
    settings = [
        f"train.steps={args.steps}",
        f"train.threads={threads}",
        "tracking.tensorboard=false",
        "tracking.jsonl=false",
        "checkpoint.every=0",
    ]
    configs = {f"mnistlab, train.route={r}": resolve("seed-mlp", None, [*settings,
               f"train.route={r}"]) for r in ROUTES}  # fmt: skip
    configs["mnistlab, train.fused=false"] = resolve("seed-mlp", None, [*settings,
                                                     "train.fused=false"])  # fmt: skip
    jax = JaxSteps(args.jax, dataset, data_dir, 1 if threads == 1 else 0) if args.jax else None
    times: dict[str, list[float]] = {k: [] for k in configs}
    if jax is not None:
        times["jax port (warm steps)"] = []
    if not args.no_bare:
        times["bare PyTorch loop"] = []
    for r in range(args.repeats):
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for name in order:
            if name in configs:
                seconds = train(configs[name], data).train_seconds
            elif name.startswith("jax"):
                assert jax is not None
                seconds = jax.seconds(args.steps)
            else:
                seconds = bare_loop(data, args.steps, 1)
            times[name].append(1e3 * seconds / args.steps)
        done = ", ".join(f"{name.split(',')[-1].strip()} {v[-1]:.3f}" for name, v in times.items())
        print(f"round {r + 1}/{args.repeats} (ms/step): {done}", flush=True)
    if jax is not None:
        jax.close()

    print(f"seed-mlp, {args.steps} steps of 100, {args.repeats} interleaved rounds:")
    print(f"  {'':34s}  median (range) ms/step      / peak  / {gemm_name.split(',')[0]}  / +update")
    floor2 = gemm_ms + traffic["ms"]
    for name, values in times.items():
        m = statistics.median(values)
        to_peak = f"{m / peak_ms:6.2f}" if peak_ms else "     -"
        print(f"  {name:34s}: {spread(values)}  {to_peak}  {m / gemm_ms:6.2f}  {m / floor2:6.2f}")
    if jax is not None:
        jx = times["jax port (warm steps)"]
        for r in ROUTES:
            q = [a / b for a, b in zip(times[f"mnistlab, train.route={r}"], jx, strict=True)]
            print(
                f"  route {r:7s} / jax, per round: median {statistics.median(q):.3f} "
                f"(range {min(q):.3f}-{max(q):.3f})"
            )
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
