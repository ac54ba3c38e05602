"""TensorFlow 2 running the original TF1-style graph program through ``tf.compat.v1``:
placeholders, ``tf.Variable``s, ``GradientDescentOptimizer.minimize(global_step=...)``,
``exponential_decay``, ``tf.nn.l2_loss`` and ``ExponentialMovingAverage``, batches fed by
``feed_dict`` in ``DataSet.next_batch`` order, one ``Session``.

Where the port departs from the book's listing, and why:
- the loss is the stable mean ``sparse_softmax_cross_entropy_with_logits`` (mnistlab's form; the
  beginner tutorial's ``-reduce_sum(y_ * log(softmax))`` can reach NaN);
- the original groups the train step and the moving-average op with
  ``control_dependencies([train_step, averages_op])``, which runs them *concurrently*: whether
  the average sees the weights (and the ``global_step``) before or after the update is left to
  the scheduler. The port orders it: the average runs after the step, with
  ``num_updates`` = averaging updates done before (mnistlab's rule, DESIGN.md §2).

``parity`` runs the same graph from given initial weights and batch order and records every
step's losses and learning rate, and the moving averages at chosen steps.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ports.common import Clock, Data, NextBatch, Program, result


def _graph(program: Program, data: Data, seed: int, init: list[np.ndarray] | None) -> Any:
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.set_random_seed(seed)
    x = v1.placeholder(tf.float32, [None, 784], name="x")
    y_ = v1.placeholder(tf.int64, [None], name="y_")
    sizes = [784, *program.hidden, 10]
    weights, biases = [], []
    h = x
    pre = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        if init is None:
            w0 = v1.random_normal([a, b], stddev=program.init_std)
            b0 = tf.constant(program.bias_init, shape=[b])
        else:
            w0, b0 = init[2 * i], init[2 * i + 1]
        w, bias = tf.Variable(w0, name=f"w{i}"), tf.Variable(b0, name=f"b{i}")
        weights.append(w)
        biases.append(bias)
        h = tf.matmul(h, w) + bias
        pre.append(h)
        if i < len(sizes) - 2:
            h = tf.nn.relu(h)
    logits = h
    cross_entropy = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y_, logits=logits)
    )
    loss = cross_entropy
    if program.l2:
        loss = cross_entropy + program.l2 * tf.add_n([tf.nn.l2_loss(w) for w in weights])
    global_step = tf.Variable(0, trainable=False, dtype=tf.int64, name="global_step")
    learning_rate = v1.train.exponential_decay(
        program.lr, global_step, data.decay_steps, program.lr_decay, staircase=False
    )
    train_step = v1.train.GradientDescentOptimizer(learning_rate).minimize(
        loss, global_step=global_step
    )
    params = [p for pair in zip(weights, biases, strict=True) for p in pair]
    evaluated = params
    train_op = train_step
    shadows: list[Any] = []
    if program.ema:
        averaged = tf.Variable(0, trainable=False, dtype=tf.int64, name="ema_updates")
        ema = v1.train.ExponentialMovingAverage(program.ema, num_updates=averaged)
        averages_op = ema.apply(params)  # shadows start equal to the initial values
        shadows = [ema.average(p) for p in params]
        with tf.control_dependencies([train_step]):  # after the update, in this order
            step_then_average = tf.group(
                *[
                    s.assign(
                        s * _decay(averaged, program.ema) + p * (1 - _decay(averaged, program.ema))
                    )
                    for s, p in zip(shadows, params, strict=True)
                ]
            )
        with tf.control_dependencies([step_then_average]):
            train_op = averaged.assign_add(1)
        del averages_op  # its update rule is reproduced in step_then_average, ordered
        evaluated = shadows
    out = x
    for i in range(len(sizes) - 1):
        out = tf.matmul(out, evaluated[2 * i]) + evaluated[2 * i + 1]
        if i < len(sizes) - 2:
            out = tf.nn.relu(out)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(out, 1), y_), tf.float32))
    return {
        "x": x,
        "y": y_,
        "train_op": train_op,
        "cross_entropy": cross_entropy,
        "loss": loss,
        "lr": learning_rate,
        "accuracy": accuracy,
        "shadows": shadows,
        "params": params,
        "first_layer": pre[0],
    }


def _decay(num_updates: Any, decay: float) -> Any:
    """``ExponentialMovingAverage``'s own rule, ``min(decay, (1 + n) / (10 + n))`` in float32."""
    import tensorflow as tf

    n = tf.cast(num_updates, tf.float32)
    return tf.minimum(decay, (1.0 + n) / (10.0 + n))


def _session(threads: int) -> Any:
    import tensorflow as tf

    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads
    )
    return tf.compat.v1.Session(config=config)


def run(program: Program, data: Data, steps: int, seed: int, threads: int) -> dict[str, Any]:
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    with tf.Graph().as_default():
        g = _graph(program, data, seed, None)
        next_batch = NextBatch(len(data.train_y), program.batch_size, seed)
        with _session(threads) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            val_feed = {g["x"]: data.val_x, g["y"]: data.val_y}
            val_acc, loss = None, None
            clock = Clock()
            for step in range(1, steps + 1):
                idx = next_batch()
                _, loss = sess.run(
                    [g["train_op"], g["loss"]],
                    {g["x"]: data.train_x[idx], g["y"]: data.train_y[idx]},
                )
                if step % program.eval_every == 0 or step == steps:
                    val_acc = sess.run(g["accuracy"], val_feed)
            seconds = clock.seconds()
            test_acc = sess.run(g["accuracy"], {g["x"]: data.test_x, g["y"]: data.test_y})
    return result(
        framework="tf-v1",
        version=f"tensorflow {tf.__version__}",
        program=program,
        steps=steps,
        seconds=seconds,
        test_accuracy=test_acc,
        validation_accuracy=val_acc,
        final_loss=loss,
        device="cpu",
        threads=str(threads or os.cpu_count()),
        notes="tf.compat.v1 graph, Session, feed_dict",
    )


def parity(
    program: Program,
    data: Data,
    init: list[np.ndarray],
    order: np.ndarray,
    snapshot_steps: list[int],
    threads: int,
) -> dict[str, Any]:
    """Run ``len(order)`` steps from ``init`` on the batches ``order``; per-step cross-entropy,
    total loss and learning rate, the moving averages (or weights) after ``snapshot_steps``,
    and the test accuracy at the end."""
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    with tf.Graph().as_default():
        g = _graph(program, data, 0, init)
        watched = g["shadows"] or g["params"]
        steps = len(order)
        ce, loss, lr = np.zeros(steps), np.zeros(steps), np.zeros(steps)
        snaps: dict[int, list[np.ndarray]] = {}
        with _session(threads) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            first_layer = None
            for i in range(steps):
                idx = order[i]
                fetch = [g["train_op"], g["cross_entropy"], g["loss"], g["lr"]]
                if i == 0:  # the first op whose results can differ: x . W1 + b1
                    fetch.append(g["first_layer"])
                got = sess.run(fetch, {g["x"]: data.train_x[idx], g["y"]: data.train_y[idx]})
                ce[i], loss[i], lr[i] = got[1:4]
                if i == 0:
                    first_layer = got[4]
                if i + 1 in snapshot_steps:
                    snaps[i + 1] = sess.run(watched)
            test_acc = sess.run(g["accuracy"], {g["x"]: data.test_x, g["y"]: data.test_y})
    return {
        "cross_entropy": ce,
        "loss": loss,
        "lr": lr,
        "snapshots": snaps,
        "test": test_acc,
        "first_layer": first_layer,
    }
