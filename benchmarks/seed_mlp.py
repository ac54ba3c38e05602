"""Speed of mnistlab's training loop against a bare PyTorch loop of the same mathematics.

Runs the ``seed-mlp`` preset for N steps through ``mnistlab.train.train`` and, in the same
process, a loop a PyTorch user would write by hand (autograd for the loss and its L2 term,
``torch.optim.SGD``, an in-place EMA, validation with the EMA weights every 500 steps) on the same
data in the same order. Prints steps/s of both, their ratio, and the time to load MNIST.

    python benchmarks/seed_mlp.py --steps 2000 --repeats 3
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

    config = resolve(
        "seed-mlp",
        None,
        [
            f"train.steps={args.steps}",
            "tracking.tensorboard=false",
            "tracking.jsonl=false",
            "checkpoint.every=0",
        ],
    )
    ours, bare = [], []
    for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits both
        result = train(config, data)
        ours.append(args.steps / result.train_seconds)
        bare.append(args.steps / bare_loop(data, args.steps, config.train.seed))
    m, b = statistics.median(ours), statistics.median(bare)
    print(f"seed-mlp, {args.steps} steps of 100, {args.repeats} interleaved repeats (median):")
    print(f"  mnistlab loop : {m:8.1f} steps/s  (runs: {', '.join(f'{v:.1f}' for v in ours)})")
    print(f"  bare PyTorch  : {b:8.1f} steps/s  (runs: {', '.join(f'{v:.1f}' for v in bare)})")
    print(f"  time ratio mnistlab/bare: {b / m:.3f}  (target: at most 1.15)")


if __name__ == "__main__":
    main()
