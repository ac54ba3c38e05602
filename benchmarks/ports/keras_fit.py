"""TensorFlow 2 with Keras, as its guides write it: ``keras.Sequential`` of ``Dense`` layers
with ``RandomNormal``/``Constant`` initialisers and an ``L2`` kernel regularizer, ``SGD`` with an
``ExponentialDecay`` schedule and its built-in moving average (``use_ema``), ``model.fit`` on a
shuffled, repeated ``tf.data`` pipeline with validation every ``eval_every`` steps (one Keras
"epoch" = ``eval_every`` steps, so the step count is exact), then ``evaluate`` on the test set.

Where Keras forces a difference:
- its moving average has no warm-up: the first update copies the weights, then the momentum is
  a fixed 0.99 (TF's ``min(0.99, (1+n)/(10+n))`` only differs for the first ~900 steps);
- validation during ``fit`` scores the raw weights; the EMA weights are swapped in
  (``finalize_variable_values``) before the final test evaluation;
- ``L2(l2 / 2)``: Keras's L2 is ``l * sum(w**2)``, TF1's ``l2_loss`` is ``sum(w**2) / 2``.
"""

from __future__ import annotations

import math
import os
from typing import Any

from ports.common import Clock, Data, Program, result


def run(program: Program, data: Data, steps: int, seed: int, threads: int) -> dict[str, Any]:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    keras.utils.set_random_seed(seed)
    sizes = [*program.hidden, 10]
    regularizer = keras.regularizers.L2(program.l2 / 2) if program.l2 else None
    model = keras.Sequential([keras.Input((784,))])
    for i, units in enumerate(sizes):
        model.add(
            keras.layers.Dense(
                units,
                activation="relu" if i < len(sizes) - 1 else None,
                kernel_initializer=keras.initializers.RandomNormal(stddev=program.init_std),
                bias_initializer=keras.initializers.Constant(program.bias_init),
                kernel_regularizer=regularizer,
            )
        )
    lr: Any = program.lr
    if program.lr_decay != 1.0:
        lr = keras.optimizers.schedules.ExponentialDecay(
            program.lr, data.decay_steps, program.lr_decay, staircase=False
        )
    optimizer = keras.optimizers.SGD(
        learning_rate=lr, use_ema=program.ema > 0, ema_momentum=program.ema or 0.99
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train = (
        tf.data.Dataset.from_tensor_slices((data.train_x, data.train_y))
        .shuffle(len(data.train_y), seed=seed)
        .repeat()
        .batch(program.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    per_epoch = min(program.eval_every, steps)
    epochs = math.ceil(steps / per_epoch)
    if epochs * per_epoch != steps:
        raise ValueError(f"steps ({steps}) must be a multiple of {per_epoch} for Keras's fit")
    clock = Clock()
    history = model.fit(
        train,
        steps_per_epoch=per_epoch,
        epochs=epochs,
        validation_data=(data.val_x, data.val_y),
        validation_batch_size=len(data.val_y),
        verbose=0,
    )
    seconds = clock.seconds()
    if program.ema:
        optimizer.finalize_variable_values(model.trainable_variables)
    _, test_acc = model.evaluate(data.test_x, data.test_y, batch_size=len(data.test_y), verbose=0)
    return result(
        framework="keras",
        version=f"keras {keras.__version__} (tensorflow {tf.__version__})",
        program=program,
        steps=steps,
        seconds=seconds,
        test_accuracy=test_acc,
        validation_accuracy=history.history["val_accuracy"][-1],
        final_loss=history.history["loss"][-1],
        device="cpu",
        threads=str(threads or os.cpu_count()),
        notes=f"model.fit, jit_compile={model.jit_compile}",
    )
