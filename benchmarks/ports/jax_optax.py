"""JAX with optax, as the Flax/optax MNIST examples write it: parameters as a pytree, one
``jax.jit``-compiled train step (``value_and_grad``, ``optax.chain(add_decayed_weights, sgd)``
with an ``exponential_decay`` schedule, the moving average updated inside the step), shuffled
numpy batches in ``DataSet.next_batch`` order handed to the step. The LeNet program (mnistlab's
``lenet`` preset: momentum, staircase decay, dropout) is written with ``lax.conv_general_dilated``
and ``lax.reduce_window`` in NHWC, dropout keyed by the step.

Where JAX forces a difference: none in the mathematics. The moving average is written out
(TF's rule) because optax's ``ema`` averages updates, not parameters; ``add_decayed_weights``
adds ``l2 * w`` to the weight matrices' gradients, the gradient of TF's ``l2 * sum(w**2) / 2``.
Compilation happens in the first step and is counted in the training time (``run``);
``serve_rounds`` times warm steps on request, for the paired step comparison of ``seed_mlp.py``.
"""

from __future__ import annotations

import os
from typing import Any

from ports.common import Clock, Data, NextBatch, Program, result


class Trainer:
    """The port's training, steppable: ``advance(k)`` runs the next ``k`` steps (validation
    every ``eval_every`` included) and returns when the device is done."""

    def __init__(self, program: Program, data: Data, seed: int, threads: int):
        if threads == 1:  # XLA's CPU client reads this once, at import
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
        import jax
        import jax.numpy as jnp
        import optax

        self.jax, self.optax, self.program, self.data = jax, optax, program, data
        params = _initial(program, seed)
        forward = _lenet_forward if program.model == "lenet" else _dense_forward
        dropout_key = jax.random.PRNGKey(seed + 1)

        def loss_fn(params: Any, x: Any, y: Any, n: Any) -> Any:
            key = jax.random.fold_in(dropout_key, n.astype(jnp.int32)) if program.dropout else None
            logits = forward(params, x, program.dropout, key)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        schedule = optax.exponential_decay(
            program.lr, data.decay_steps, program.lr_decay, staircase=program.staircase
        )
        mask = [{"w": True, "b": False} for _ in params]
        sgd = optax.sgd(schedule, momentum=program.momentum or None)
        tx = optax.chain(optax.add_decayed_weights(program.l2, mask=mask), sgd)

        @jax.jit
        def train_step(params: Any, opt_state: Any, shadows: Any, n: Any, x: Any, y: Any) -> Any:
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y, n)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if program.ema:
                d = jnp.minimum(program.ema, (1.0 + n) / (10.0 + n))
                shadows = jax.tree.map(lambda s, p: d * s + (1 - d) * p, shadows, params)
            return params, opt_state, shadows, loss

        @jax.jit
        def accuracy(params: Any, x: Any, y: Any) -> Any:
            return (forward(params, x, 0.0, None).argmax(1) == y).mean()

        self.train_step, self._accuracy = train_step, accuracy
        self.params, self.opt_state, self.shadows = params, tx.init(params), params
        self.next_batch = NextBatch(len(data.train_y), program.batch_size, seed)
        self.step, self.val_acc, self.loss = 0, None, None

    def accuracy(self, params: Any, x: Any, y: Any, chunk: int = 1000) -> float:
        """Accuracy over ``x`` in chunks (LeNet's activations for 10,000 images at once would
        take gigabytes)."""
        hits = sum(float(self._accuracy(params, x[i : i + chunk], y[i : i + chunk])) * len(y[i : i + chunk])
                   for i in range(0, len(y), chunk))  # fmt: skip
        return hits / len(y)

    @property
    def evaluated(self) -> Any:
        return self.shadows if self.program.ema else self.params

    def advance(self, k: int, last: int | None = None) -> None:
        data, program = self.data, self.program
        for _ in range(k):
            self.step += 1
            idx = self.next_batch()
            self.params, self.opt_state, self.shadows, self.loss = self.train_step(
                self.params,
                self.opt_state,
                self.shadows,
                float(self.step - 1),
                data.train_x[idx],
                data.train_y[idx],
            )
            if self.step % program.eval_every == 0 or self.step == last:
                self.val_acc = float(self.accuracy(self.evaluated, data.val_x, data.val_y))
        self.jax.block_until_ready(self.params)


def run(program: Program, data: Data, steps: int, seed: int, threads: int) -> dict[str, Any]:
    trainer = Trainer(program, data, seed, threads)
    clock = Clock()
    trainer.advance(steps, last=steps)
    seconds = clock.seconds()
    jax, optax = trainer.jax, trainer.optax
    return result(
        framework="jax",
        version=f"jax {jax.__version__}, optax {optax.__version__}",
        program=program,
        steps=steps,
        seconds=seconds,
        test_accuracy=float(trainer.accuracy(trainer.evaluated, data.test_x, data.test_y)),
        validation_accuracy=trainer.val_acc,
        final_loss=None if trainer.loss is None else float(trainer.loss),
        device=str(jax.devices()[0].platform),
        threads="1" if threads == 1 else f"XLA default ({os.cpu_count()} cores)",
        notes="jax.jit step",
    )


def serve_rounds(program: Program, data: Data, seed: int, threads: int) -> None:
    """For a paired comparison (``seed_mlp.py --jax``): after one warm-up step (compilation),
    read a step count from each line of stdin, run that many steps, answer the seconds."""
    import sys
    import time

    trainer = Trainer(program, data, seed, threads)
    trainer.advance(1)
    print("ready", flush=True)
    for line in sys.stdin:
        k = int(line)
        began = time.perf_counter()
        trainer.advance(k)
        print(f"{time.perf_counter() - began:.9f}", flush=True)


def _initial(program: Program, seed: int) -> list[dict[str, Any]]:
    """Weights from N(0, std) (or truncated at two std), biases constant; conv kernels HWIO."""
    import jax
    import jax.numpy as jnp

    if program.model == "lenet":
        shapes = [(5, 5, 1, 32), (5, 5, 32, 64), (7 * 7 * 64, program.hidden[0]),
                  (program.hidden[0], 10)]  # fmt: skip
    else:
        sizes = [784, *program.hidden, 10]
        shapes = list(zip(sizes, sizes[1:], strict=False))
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    layers = []
    for key, shape in zip(keys, shapes, strict=True):
        if program.init == "truncated_normal":
            w = jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)
        else:
            w = jax.random.normal(key, shape, jnp.float32)
        layers.append({"w": program.init_std * w,
                       "b": jnp.full((shape[-1],), program.bias_init, jnp.float32)})  # fmt: skip
    return layers


def _dense_forward(params: Any, x: Any, dropout: float, key: Any) -> Any:
    import jax

    for i, layer in enumerate(params):
        x = x @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def _lenet_forward(params: Any, x: Any, dropout: float, key: Any) -> Any:
    """conv 5x5 (same) → ReLU → max-pool 2, twice; dense → ReLU → dropout; logits (NHWC)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    x = x.reshape(-1, 28, 28, 1)
    for conv in params[:2]:
        x = lax.conv_general_dilated(x, conv["w"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip
        x = jax.nn.relu(x + conv["b"])
        x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    x = jax.nn.relu(x.reshape(x.shape[0], -1) @ params[2]["w"] + params[2]["b"])
    if key is not None and dropout:
        keep = jax.random.bernoulli(key, 1.0 - dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout), 0.0)
    return x @ params[3]["w"] + params[3]["b"]
