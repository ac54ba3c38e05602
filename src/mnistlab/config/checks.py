"""``validate``: reject settings that cannot work, before anything is allocated or started.

Every check names the key, the value and what would work. Some limits depend on the machine (the
memory a model needs, the CPU cores a process may use); they are read here with the standard
library, so a 3 TB model or 100,000 threads fail as one line instead of an allocation or a crash.
"""

from __future__ import annotations

import difflib
import math
import os
import typing
from dataclasses import fields

from mnistlab.config.model_rules import MODEL_RULES, layer_outputs, parameter_count
from mnistlab.config.schema import (
    DENSE_ROUTES,
    INIT_NAMES,
    INPUT_SHAPE,
    LOSS_NAMES,
    LR_SCHEDULES,
    OPTIMIZER_NAMES,
    PARALLEL_MODES,
    SCHEDULES,
    SECTIONS,
    SWITCHES,
    Config,
    field_types,
)
from mnistlab.errors import ConfigError

SEED_MAX = 2**63 - 1
"""torch takes a 64-bit seed and the loop derives others from it (seed + 1, ...): stay below."""
INT_MAX = 2**63 - 1
"""The largest integer any setting may hold: torch and numpy keep counts in 64 bits, so a larger
one overflows deep inside them (a traceback) instead of being refused here."""


def show_int(value: int) -> str:
    """An integer for a message: exact up to 18 digits, else its order of magnitude (Python
    refuses to print one of more than 4,300 digits at all)."""
    if abs(value) < 10**18:
        return str(value)
    return f"{'-' if value < 0 else ''}about 10**{int(math.log10(abs(value)))}"


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        near = difflib.get_close_matches(value, choices, n=1, cutoff=0.4)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}{hint}")


def _check_int_range(config: Config) -> None:
    """Every integer setting (and each ``model.hidden`` size) fits in 64 bits."""
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            value = getattr(getattr(config, section), f.name)
            values = value if isinstance(value, tuple) else (value,)
            for v in values:
                if isinstance(v, int) and not isinstance(v, bool) and not -INT_MAX <= v <= INT_MAX:
                    raise ConfigError(
                        f"{section}.{f.name}={show_int(v)} is out of range: settings hold "
                        f"integers of at most {INT_MAX:,} (2**63-1)"
                    )


def _check_finite(config: Config) -> None:
    """NaN or infinity in any float setting: named up front, not discovered as a NaN loss."""
    for section, cls in SECTIONS.items():
        hints = field_types(section)
        for f in fields(cls):
            if float not in (hints[f.name], *typing.get_args(hints[f.name])):
                continue
            value = getattr(getattr(config, section), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{f.name} must be a finite number; got {value}")


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup limit; None when
    neither can be read (the size check is then skipped)."""
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


FAMILY_EXAMPLES = 70_000
"""Images of an MNIST-family dataset (60,000 to train, 10,000 to test), all held in memory as
float32 while a run trains; the memory check counts them (it runs before the data is found)."""
EVAL_CHUNK = 10_000
"""Images evaluated at once (``Strategy.predict``'s chunk)."""
OPTIMIZER_COPIES = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2}
"""Copies of every parameter an optimizer keeps (momentum buffer; Adam's two moments)."""


def memory_parts(config: Config) -> dict[str, int]:
    """Bytes a run of ``config`` needs, by the setting that sizes each part (an estimate made
    before anything is allocated; float32 throughout):

    - ``model.hidden``: weights, gradients, the moving average and the optimizer's state (copies
      of every parameter), plus evaluation in chunks of ``EVAL_CHUNK`` images, where two
      consecutive layer outputs are alive at once;
    - ``train.batch_size``: one step's images, every layer's output kept for the backward pass
      and the gradient of each;
    - ``train.log_every``: what is held between two boundaries: each step's loss, and where the
      step tables run (``train.compile=on``, or ``train.device=cuda...``, where the tables sit in
      device memory this check cannot see, so it counts them here) each step's batch indices;
    - ``data``: the dataset's images and labels (``FAMILY_EXAMPLES``).
    """
    m, o, t = config.model, config.optim, config.train
    inputs = math.prod(INPUT_SHAPE)
    outputs = layer_outputs(m)
    copies = 2 + (o.ema_decay > 0) + OPTIMIZER_COPIES.get(o.name, 2)
    tables = t.compile == "on" or t.device.startswith("cuda")
    widest_pair = max(a + b for a, b in zip([inputs, *outputs], outputs, strict=False))
    return {
        "model.hidden": parameter_count(m) * 4 * copies + EVAL_CHUNK * 4 * widest_pair,
        "train.batch_size": t.batch_size * (4 * (inputs + 2 * sum(outputs)) + 8),
        "train.log_every": t.log_every * (4 + (8 * t.batch_size + 12) * tables),
        "data": FAMILY_EXAMPLES * (4 * inputs + 8),
    }


def _check_memory(config: Config) -> None:
    """Refuse a run that cannot fit in the memory this machine has, naming the setting whose part
    is largest (``memory_parts``): a raw allocation error half-way into training says nothing."""
    parts = memory_parts(config)
    need, have = sum(parts.values()), available_memory()
    if have is None or need <= have:
        return
    key = max(("model.hidden", "train.batch_size", "train.log_every"), key=parts.__getitem__)
    m, t = config.model, config.train
    rest = need - parts[key]
    budget = f"but this machine has {_human(have)} of memory available"
    if key == "model.hidden":
        raise ConfigError(
            f"model.hidden={','.join(map(str, m.hidden))} makes a {m.name} model of "
            f"{parameter_count(m):,} parameters, about {_human(need)} to train (weights, "
            f"gradients, average, optimizer state, activations, the data) {budget}: choose "
            "smaller layers (seed-mlp uses 500)"
        )
    per_step = parts[key] // getattr(t, key.split(".")[1])
    fits = max(0, (have - rest) // per_step)
    hint = f"at most about {fits:,} fits" if fits else "the rest of the run alone does not fit"
    what = (
        "one step's images, layer outputs and their gradients"
        if key == "train.batch_size"
        else "what that many steps hold between two boundaries (losses, batch indices)"
    )
    raise ConfigError(
        f"{key}={getattr(t, key.split('.')[1]):,} needs about {_human(parts[key])} for {what}, "
        f"about {_human(need)} in all, {budget}: lower {key} ({hint})"
    )


def _check_batch_statistics(config: Config) -> None:
    """A model with batch norm computes on whole batches and keeps running statistics: split
    across ranks or micro-batches, each part would normalise with its own statistics, and the
    parallel modes carry parameters between ranks, not those statistics. One process trains it."""
    m, p = config.model, config.parallel
    if MODEL_RULES[m.name].batch_statistics and p.mode != "none":
        raise ConfigError(
            f"model {m.name!r} normalises with batch statistics (batch norm), which mnistlab's "
            f"parallel modes do not split or carry between ranks: train it without "
            f"--parallel {p.mode} (one process)"
        )


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset set)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def validate(config: Config, *, machine: bool = True) -> Config:
    """Reject settings that cannot work, with the key and the reason. ``machine=False`` leaves
    out what depends on this machine (its memory, its cores): how a checkpoint's saved settings
    are checked, which were chosen for the machine that trained it."""
    m, o, t, p, c = config.model, config.optim, config.train, config.parallel, config.checkpoint
    _check_finite(config)
    _choice(m.name, tuple(MODEL_RULES), "model.name")
    _choice(m.init, INIT_NAMES, "model.init")
    _choice(o.name, OPTIMIZER_NAMES, "optim.name")
    _choice(o.schedule, LR_SCHEDULES, "optim.schedule")
    _choice(t.loss, LOSS_NAMES, "train.loss")
    _choice(t.compile, SWITCHES, "train.compile")
    _choice(t.cuda_graphs, SWITCHES, "train.cuda_graphs")
    _choice(t.route, DENSE_ROUTES, "train.route")
    _choice(p.mode, PARALLEL_MODES, "parallel.mode")
    _choice(p.schedule, SCHEDULES, "parallel.schedule")
    positive = {
        "train.steps": t.steps,
        "train.batch_size": t.batch_size,
        "train.eval_every": t.eval_every,
        "train.log_every": t.log_every,
        "parallel.workers": p.workers,
        "parallel.microbatches": p.microbatches,
        "checkpoint.keep": c.keep,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1; got {value}")
    if o.decay_steps is not None and o.decay_steps < 1:
        raise ConfigError(f"optim.decay_steps must be at least 1; got {o.decay_steps}")
    if not o.lr > 0:
        raise ConfigError(f"optim.lr must be a positive number; got {o.lr}")
    if not 0 < o.lr_decay <= 1:
        raise ConfigError(f"optim.lr_decay must be in (0, 1]; got {o.lr_decay}")
    if not 0 <= o.ema_decay < 1:
        raise ConfigError(
            f"optim.ema_decay must be in [0, 1) (0 turns the average off); got {o.ema_decay}"
        )
    if o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps must be 0 (none) or positive; got {o.warmup_steps}")
    if o.schedule == "linear" and o.warmup_steps >= t.steps:
        raise ConfigError(
            f"optim.warmup_steps={o.warmup_steps} leaves no steps for the linear schedule to fall "
            f"over (train.steps={t.steps}): make it smaller than train.steps"
        )
    if o.l2 < 0:
        raise ConfigError(f"optim.l2 must not be negative; got {o.l2}")
    if not 0 <= o.momentum < 1:
        raise ConfigError(f"optim.momentum must be in [0, 1); got {o.momentum}")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1); got {m.dropout}")
    if m.pool_first and m.name != "cnn":
        raise ConfigError(f"model.pool_first is a setting of the cnn; model.name is {m.name!r}")
    if m.init_std <= 0:
        raise ConfigError(f"model.init_std must be positive; got {m.init_std}")
    if any(h < 1 for h in m.hidden):
        raise ConfigError(f"model.hidden sizes must be positive; got {m.hidden}")
    reason = MODEL_RULES[m.name].hidden_error(m.hidden)
    if reason:
        raise ConfigError(f"model.hidden {reason}")
    _check_batch_statistics(config)
    v = config.data.validation_size
    if v is not None and v < 1:
        raise ConfigError(
            f"data.validation_size must be at least 1 (training measures validation accuracy "
            f"every train.eval_every steps; leave it unset for the dataset's own size); got {v}"
        )
    if c.every < 0:
        raise ConfigError(
            f"checkpoint.every must be 0 (only at the end) or positive; got {c.every}"
        )
    if config.tracking.histogram_every < 0:
        raise ConfigError("tracking.histogram_every must be 0 (off) or positive")
    if not 0 <= t.seed <= SEED_MAX:
        raise ConfigError(
            f"train.seed must be between 0 and {SEED_MAX} (2**63-1); got {show_int(t.seed)}"
        )
    if t.threads < 0:
        raise ConfigError(f"train.threads must be 0 (torch's default) or positive; got {t.threads}")
    _check_int_range(config)  # after the checks with their own ranges, which say more
    if machine:
        _check_machine(config)
    return config


def _check_machine(config: Config) -> None:
    """What this machine can hold and run: memory, then CPU cores."""
    _check_memory(config)
    t = config.train
    cores = usable_cores()
    if t.threads > cores:
        raise ConfigError(
            f"train.threads={t.threads} is more than the {cores} CPU cores this process may use: "
            f"set at most {cores} (or 0 for torch's default)"
        )
