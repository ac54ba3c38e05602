"""Every setting of a run, as one tree of frozen dataclasses.

A run's configuration is plain values: presets (``presets.py``) override the defaults, TOML files
and ``--set section.key=value`` override a preset, and ``validate`` rejects what cannot work. The
resolved tree is saved into every checkpoint and into TensorBoard's hparams.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass, field

INPUT_SHAPE = (1, 28, 28)
"""(channels, height, width) of the MNIST family's images: the default ``DatasetSpec.input_shape``
and the shape a model is built for when no dataset is named."""
INIT_NAMES = ("normal", "truncated_normal", "fan_in", "zeros")
OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "adam")
LR_SCHEDULES = ("exponential", "linear")
LOSS_NAMES = ("stable", "naive")
SWITCHES = ("auto", "on", "off")
DENSE_ROUTES = ("auto", "exact", "mkl", "onednn", "trimmed")
PARALLEL_MODES = ("none", "data", "async", "tensor", "pipeline")
SCHEDULES = ("gpipe", "1f1b")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "auto"
    """Registered dataset name; ``auto`` means full MNIST when it can be found, else ``mnist-sample``."""
    data_dir: str | None = None
    """A folder holding the four IDX files (``--data-dir``); else ``MNISTLAB_DATA``, cache, system."""
    validation_size: int | None = None
    """First N training images kept for validation; ``None`` uses the dataset's own (5,000 for MNIST)."""
    download: bool = True


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    hidden: tuple[int, ...] = (500,)
    """Hidden layer sizes of the MLP; for LeNet, the size of its first dense layer; for the cnn,
    the widths (channels) of its convolution blocks."""
    init: str = "normal"
    """Weights ~ ``normal`` or ``truncated_normal`` (at 2 std) of ``init_std``, as TensorFlow's
    programs; ``fan_in``: uniform in ±1/√(inputs of a unit), PyTorch's own default for its layers;
    ``zeros``."""
    init_std: float = 0.1
    bias_init: float = 0.1
    dropout: float = 0.0
    """Dropout before LeNet's last layer (probability of dropping), 0 for none."""
    pool_first: bool = False
    """cnn only: each block max-pools straight after its convolution, then applies batch norm
    and ReLU to the pooled map (a quarter of the values), instead of pooling last."""


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"
    """``sgd`` (plain), ``momentum``, ``nesterov`` (momentum with Nesterov's look-ahead), ``adam``."""
    lr: float = 0.1
    schedule: str = "exponential"
    """``exponential``: ``lr · lr_decay^(step / decay_steps)``, the classic programs' decay.
    ``linear``: from ``lr`` down to 0 at ``train.steps`` in a straight line."""
    warmup_steps: int = 0
    """Steps over which the rate first rises linearly to the schedule's value (0: none)."""
    lr_decay: float = 0.99
    """Multiplied into the learning rate once per ``decay_steps``; 1.0 keeps it constant."""
    decay_steps: int | None = None
    """``None``: training examples / batch size, one decay per epoch as the classic programs do."""
    staircase: bool = False
    momentum: float = 0.9
    l2: float = 1e-4
    """TensorFlow's L2: ``l2 * sum(w**2) / 2`` over weight matrices only, never biases."""
    ema_decay: float = 0.99
    """Moving average of the weights, ``min(ema_decay, (1+n)/(10+n))``; 0 turns it off."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 30_000
    batch_size: int = 100
    """The global batch: split across ranks under data parallelism, never multiplied."""
    eval_every: int = 500
    log_every: int = 100
    seed: int = 1
    device: str = "auto"
    loss: str = "stable"
    """``stable``: mean cross-entropy from log-softmax. ``naive``: the original programs'
    ``-sum(y * log(softmax))`` over the batch, which can reach NaN; training then stops loudly."""
    threads: int = 0
    """CPU threads for torch; 0 keeps torch's default (at most the cores this process may use)."""
    fused: bool = True
    """Softmax and MLP with SGD in one process: the step's gradient written out by hand into
    buffers made once (the same kernels autograd calls); false steps through autograd."""
    compile: str = "auto"
    """``torch.compile`` the fused step: on, off, auto (off: measured slower on an H100)."""
    cuda_graphs: str = "auto"
    """Capture the fused step as CUDA graphs replayed between boundaries: auto (on CUDA), off."""
    tf32: bool = False
    """On CUDA, let float32 matrix products and convolutions use TF32 (faster on Ampere and
    later, about 3 fewer significant digits). Off: exact float32, whatever torch's defaults."""
    route: str = "exact"
    """How the fused dense step runs on the CPU (``training/routes.py``): ``exact`` (the default:
    autograd's kernels, bit-equal to autograd), ``mkl`` (SGD folded into the weight-gradient
    product, no gradient buffer), ``onednn`` (as mkl, the forward products in oneDNN with bias and
    ReLU fused), ``trimmed`` (as onednn, the first layer's products only over the pixels the
    batch inks: ``training/trimmed.py``); ``auto`` picks per CPU and model at run start, and a
    resume keeps the route its checkpoint recorded. The fast routes sum in another order, so
    their losses leave exact's by more than 1e-5 within 1,000 steps (as exact's leave
    float64's): opt-in, so that a preset's digits stay autograd's unless asked."""


@dataclass(frozen=True)
class ParallelConfig:
    mode: str = "none"
    workers: int = 1
    schedule: str = "gpipe"
    microbatches: int = 1


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 1000
    """Steps between checkpoints (and one at the end); 0 writes only the final one."""
    keep: int = 3


@dataclass(frozen=True)
class TrackingConfig:
    tensorboard: bool = True
    histogram_every: int = 1000
    """Steps between weight and gradient histograms; 0 turns them off."""
    jsonl: bool = True


@dataclass(frozen=True)
class Config:
    preset: str = "seed-mlp"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "parallel": ParallelConfig,
    "checkpoint": CheckpointConfig,
    "tracking": TrackingConfig,
}


@functools.cache
def field_types(section: str) -> dict[str, typing.Any]:
    """``{key: type}`` of a section's settings (resolved once: ``typing.get_type_hints`` takes
    about a millisecond, and a config is read setting by setting)."""
    return typing.get_type_hints(SECTIONS[section])
