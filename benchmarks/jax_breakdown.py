"""Where the JAX port's seed-mlp step spends its time, by subtraction.

The port's step (``ports/jax_optax.py``) and four cut-down versions of it, each its own
``jax.jit`` on the same arrays: the forward pass alone; the loss and its gradient (no update);
the whole step without the moving average; the whole step. Each is timed as the best and the
median of many short bursts, in rounds that alternate them; the differences say what the
backward pass, the update and the moving average add. With ``--dump DIR`` XLA writes its
optimised HLO there (``XLA_FLAGS=--xla_dump_to``): which products became library calls
(``__ynn_fusion``: YNNPACK) and which elementwise work was fused.

    /path/to/venv/bin/python benchmarks/jax_breakdown.py [--bursts 200] [--dump DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bursts", type=int, default=200)
    p.add_argument("--dump", help="folder for XLA's HLO dumps")
    args = p.parse_args()
    if args.dump:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={args.dump}"
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from catalog import cpu_line

    print(f"machine: {cpu_line()}; jax {jax.__version__}")
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.random((100, 784), np.float32))
    y = jnp.asarray(rng.integers(0, 10, 100))
    params = [
        {"w": jnp.asarray(0.1 * rng.standard_normal((784, 500), np.float32)),
         "b": jnp.full((500,), 0.1, jnp.float32)},
        {"w": jnp.asarray(0.1 * rng.standard_normal((500, 10), np.float32)),
         "b": jnp.full((10,), 0.1, jnp.float32)},
    ]  # fmt: skip

    def forward(params, x):  # type: ignore[no-untyped-def]
        h = jax.nn.relu(x @ params[0]["w"] + params[0]["b"])
        return h @ params[1]["w"] + params[1]["b"]

    def loss_fn(params, x, y):  # type: ignore[no-untyped-def]
        return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()

    mask = [{"w": True, "b": False}, {"w": True, "b": False}]
    tx = optax.chain(optax.add_decayed_weights(1e-4, mask=mask),
                     optax.sgd(optax.exponential_decay(0.1, 550, 0.99)))  # fmt: skip
    opt_state = tx.init(params)

    def sgd_step(params, opt_state, x, y):  # type: ignore[no-untyped-def]
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def full_step(params, opt_state, shadows, n, x, y):  # type: ignore[no-untyped-def]
        params, opt_state, loss = sgd_step(params, opt_state, x, y)
        d = jnp.minimum(0.99, (1.0 + n) / (10.0 + n))
        shadows = jax.tree.map(lambda s, p: d * s + (1 - d) * p, shadows, params)
        return params, opt_state, shadows, loss

    fns = {
        "two large products alone": jax.jit(lambda p, x, g: (x @ p[0]["w"], x.T @ g)),
        "forward": jax.jit(forward),
        "loss and gradient": jax.jit(jax.value_and_grad(loss_fn)),
        "step without the moving average": jax.jit(sgd_step),
        "whole step (the port's)": jax.jit(full_step),
    }
    g = jnp.asarray(rng.standard_normal((100, 500), np.float32))
    calls = {
        "two large products alone": lambda f: f(params, x, g),
        "forward": lambda f: f(params, x),
        "loss and gradient": lambda f: f(params, x, y),
        "step without the moving average": lambda f: f(params, opt_state, x, y),
        "whole step (the port's)": lambda f: f(params, opt_state, params, 5.0, x, y),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for name, f in fns.items():
        jax.block_until_ready(calls[name](f))
    for r in range(args.bursts):
        for name in fns if r % 2 == 0 else reversed(list(fns)):
            f, call = fns[name], calls[name]
            began = time.perf_counter()
            for _ in range(20):
                out = call(f)
            jax.block_until_ready(out)
            times[name].append(1e6 * (time.perf_counter() - began) / 20)
    for name, v in times.items():
        print(f"  {name:34s} best {min(v):8.1f} us   median {statistics.median(v):8.1f} us")


if __name__ == "__main__":
    main()
