"""The named starting points: the classic TensorFlow programs, reproduced exactly (README, "Presets").

Each preset is a small function that overrides the defaults; everything stays overridable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from mnistlab.config.schema import Config, ModelConfig, OptimConfig, TrainConfig


def seed_softmax() -> Config:
    """TensorFlow's beginner tutorial: softmax regression, plain SGD at 0.5, 1,000 steps of 100."""
    return Config(
        preset="seed-softmax",
        model=ModelConfig(name="softmax", hidden=(), init="normal", init_std=0.1, bias_init=0.0),
        optim=OptimConfig(name="sgd", lr=0.5, lr_decay=1.0, l2=0.0, ema_decay=0.0),
        train=TrainConfig(steps=1000, batch_size=100, eval_every=100),
    )


def seed_mlp() -> Config:
    """The 784-500-10 MLP with exponential decay, L2 and a moving average of the weights."""
    return Config(preset="seed-mlp")


def seed_mlp_book() -> Config:
    """The book's own program: truncated-normal weights, base rate 0.8, staircase decay."""
    base = seed_mlp()
    return replace(
        base,
        preset="seed-mlp-book",
        model=replace(base.model, init="truncated_normal"),
        optim=replace(base.optim, lr=0.8, staircase=True),
    )


def lenet() -> Config:
    """LeNet-5 style CNN (TensorFlow's convolutional MNIST example) with the same EMA machinery:
    conv 5x5x32, pool, conv 5x5x64, pool, dense 512, dropout 0.5, dense 10; momentum SGD."""
    return Config(
        preset="lenet",
        model=ModelConfig(
            name="lenet", hidden=(512,), init="truncated_normal", bias_init=0.1, dropout=0.5
        ),
        optim=OptimConfig(
            name="momentum",
            lr=0.01,
            momentum=0.9,
            lr_decay=0.95,
            staircase=True,
            l2=5e-4,
            ema_decay=0.99,
        ),
        train=TrainConfig(steps=10_000, batch_size=100, eval_every=500),
    )


def speedrun() -> Config:
    """The fastest route to 99% test accuracy we found on 2 CPU cores (README, "speedrun"): a
    two-block batch-norm CNN, Nesterov momentum, a linear warm-up then a linear fall to zero, three
    epochs of 128; designed on the validation split only."""
    return Config(
        preset="speedrun",
        model=ModelConfig(name="cnn", hidden=(16, 32), init="fan_in", bias_init=0.0),
        optim=OptimConfig(
            name="nesterov",
            lr=0.2,
            momentum=0.9,
            schedule="linear",
            warmup_steps=129,
            l2=5e-4,
            ema_decay=0.0,
        ),
        train=TrainConfig(steps=1289, batch_size=128, eval_every=430, log_every=43),
    )


def speedrun_lite() -> Config:
    """The speedrun at half the cost (docs/speedrun.md): the same recipe with half the
    convolution widths (8, 16) and two epochs instead of three; 99.02% mean test accuracy over
    five seeds in 9.7 s of training on 2 CPU cores, against the speedrun's 99.28% in 19.5 s on
    the same machine.
    Chosen among one-, one-and-a-half-, two- and two-and-a-half-epoch runs of widths (8, 16),
    (12, 24) and (16, 32), and a batch of 256, by their validation accuracy only."""
    base = speedrun()
    return replace(
        base,
        preset="speedrun-lite",
        model=replace(base.model, hidden=(8, 16)),
        optim=replace(base.optim, warmup_steps=86),
        train=replace(base.train, steps=860),
    )


def speedrun_pool() -> Config:
    """``speedrun-lite`` with each block pooling before its batch norm and ReLU
    (``model.pool_first``; docs/speedrun.md): batch norm, a third of the lite step at eight
    channels, then sees a quarter of the values. Chosen on the validation split only."""
    base = speedrun_lite()
    return replace(base, preset="speedrun-pool", model=replace(base.model, pool_first=True))


PRESETS: dict[str, Callable[[], Config]] = {
    "seed-softmax": seed_softmax,
    "seed-mlp": seed_mlp,
    "seed-mlp-book": seed_mlp_book,
    "lenet": lenet,
    "speedrun": speedrun,
    "speedrun-lite": speedrun_lite,
    "speedrun-pool": speedrun_pool,
}
