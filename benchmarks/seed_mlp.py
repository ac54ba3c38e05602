"""Speed of mnistlab's training step against its floor and against a bare PyTorch loop.

In one process, interleaved so that drift in the machine's speed hits all alike:

- *floor*: the step's five matrix products alone (100x784x500 forward, its two backward
  products, the small second layer's three), into buffers made once: no loop can beat it;
- *mnistlab*: the ``seed-mlp`` preset for N steps through ``mnistlab.train.train`` with its
  default engine (the fused step), validation every 500 steps included;
- *mnistlab autograd*: the same with ``train.fused=false`` (the engine every parallel mode uses);
- *bare PyTorch*: the loop a PyTorch user would write by hand (autograd for the loss and its L2
  term, ``torch.optim.SGD``, an in-place EMA, validation with the EMA weights every 500 steps).

Prints ms per step of each, the ratios to the floor, and the time to load MNIST.

    python benchmarks/seed_mlp.py --steps 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_run_args, start  # noqa: E402
from mnistlab.config import resolve  # noqa: E402
from mnistlab.data import Batcher, load_splits  # noqa: E402
from mnistlab.models import build_model  # noqa: E402
from mnistlab.train import train  # noqa: E402


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


def matmul_floor(steps: int) -> float:
    """Seconds for ``steps`` repetitions of the seed-mlp step's five matrix products."""
    n, d, h, c = 100, 784, 500, 10
    x, g_hidden, g_out = torch.rand(n, d), torch.randn(n, h), torch.randn(n, c)
    w1, b1, w2, b2 = torch.randn(h, d), torch.randn(h), torch.randn(c, h), torch.randn(c)
    hidden, out = torch.empty(n, h), torch.empty(n, c)
    gw1, gw2, gx = torch.empty(h, d), torch.empty(c, h), torch.empty(n, h)
    began = time.perf_counter()
    for _ in range(steps):
        torch.addmm(b1, x, w1.t(), out=hidden)
        torch.addmm(b2, hidden, w2.t(), out=out)
        torch.mm(g_out.t(), hidden, out=gw2)
        torch.mm(g_out, w2, out=gx)
        torch.mm(g_hidden.t(), x, out=gw1)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_args(parser, steps=2000, repeats=3)
    args = parser.parse_args()
    dataset, data_dir = start(args)

    began = time.perf_counter()
    data = load_splits(dataset, data_dir)
    load_seconds = time.perf_counter() - began
    print(
        f"loading {dataset} from IDX files into tensors (checksums and checks included): "
        f"{load_seconds:.3f} s"
    )

    settings = [
        f"train.steps={args.steps}",
        "tracking.tensorboard=false",
        "tracking.jsonl=false",
        "checkpoint.every=0",
    ]
    fused = resolve("seed-mlp", None, settings)
    autograd = resolve("seed-mlp", None, [*settings, "train.fused=false"])
    times: dict[str, list[float]] = {k: [] for k in ("floor", "mnistlab", "autograd", "bare")}
    matmul_floor(200)  # warm the kernels
    for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits all
        times["floor"].append(matmul_floor(args.steps))
        times["mnistlab"].append(train(fused, data).train_seconds)
        times["autograd"].append(train(autograd, data).train_seconds)
        times["bare"].append(bare_loop(data, args.steps, fused.train.seed))
    ms = {k: 1e3 * statistics.median(v) / args.steps for k, v in times.items()}
    labels = {
        "floor": "five matrix products alone",
        "mnistlab": "mnistlab (fused step)",
        "autograd": "mnistlab, train.fused=false",
        "bare": "bare PyTorch loop",
    }
    print(f"seed-mlp, {args.steps} steps of 100, {args.repeats} interleaved repeats (median):")
    for key, label in labels.items():
        runs = ", ".join(f"{1e3 * v / args.steps:.3f}" for v in times[key])
        ratio = ms[key] / ms["floor"]
        print(f"  {label:30s}: {ms[key]:6.3f} ms/step  {ratio:5.2f}x floor  (runs: {runs})")
    print(f"  mnistlab / floor: {ms['mnistlab'] / ms['floor']:.3f} (target: at most 1.25)")
    print(f"  mnistlab / bare PyTorch: {ms['mnistlab'] / ms['bare']:.3f}")


if __name__ == "__main__":
    main()
