"""JAX with optax, as the Flax/optax MNIST examples write it: parameters as a pytree, one
``jax.jit``-compiled train step (``value_and_grad``, ``optax.chain(add_decayed_weights, sgd)``
with an ``exponential_decay`` schedule, the moving average updated inside the step), shuffled
numpy batches in ``DataSet.next_batch`` order handed to the step.

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
        sizes = [784, *program.hidden, 10]
        keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes) - 1)
        params = [
            {
                "w": program.init_std * jax.random.normal(k, (a, b), jnp.float32),
                "b": jnp.full((b,), program.bias_init, jnp.float32),
            }
            for k, a, b in zip(keys, sizes, sizes[1:], strict=False)
        ]

        def forward(params: Any, x: Any) -> Any:
            for i, layer in enumerate(params):
                x = x @ layer["w"] + layer["b"]
                if i < len(params) - 1:
                    x = jax.nn.relu(x)
            return x

        def loss_fn(params: Any, x: Any, y: Any) -> Any:
            logits = forward(params, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        schedule = optax.exponential_decay(program.lr, data.decay_steps, program.lr_decay)
        mask = [{"w": True, "b": False} for _ in params]
        tx = optax.chain(optax.add_decayed_weights(program.l2, mask=mask), optax.sgd(schedule))

        @jax.jit
        def train_step(params: Any, opt_state: Any, shadows: Any, n: Any, x: Any, y: Any) -> Any:
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if program.ema:
                d = jnp.minimum(program.ema, (1.0 + n) / (10.0 + n))
                shadows = jax.tree.map(lambda s, p: d * s + (1 - d) * p, shadows, params)
            return params, opt_state, shadows, loss

        @jax.jit
        def accuracy(params: Any, x: Any, y: Any) -> Any:
            return (forward(params, x).argmax(1) == y).mean()

        self.train_step, self.accuracy = train_step, accuracy
        self.params, self.opt_state, self.shadows = params, tx.init(params), params
        self.next_batch = NextBatch(len(data.train_y), program.batch_size, seed)
        self.step, self.val_acc, self.loss = 0, None, None

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
