"""Trusting what a checkpoint holds: every value checked against what mnistlab writes, before
anything is built from it.

A checkpoint's sha256 proves that the file is whole, not that it is safe: anyone can edit one and
compute the checksum again. So every checkpoint that is read (``eval``, ``predict``, ``export``,
``serve``, ``train --resume``, ``mnistlab.load``) goes through ``check_state`` first:

- the saved settings through the same checks as new ones (``config.validate``, less what depends
  on the machine: they were chosen for the one that trained it);
- the model's tensors against the model those settings build: first the count of numbers
  (arithmetic, so a forged ``model.hidden=[10**9]`` or a ``(10**9, 0)`` logits weight is refused
  before anything is allocated), then each name, shape and dtype against the model built on the
  meta device (which allocates nothing), then finiteness (NaN or infinite weights);
- the moving average's shadows, batch norm's statistics and the optimizer's state the same way;
- the step and every counter (averaging updates, data order, random-number states) of the right
  type and in range, each state of the shape ``Run.load_state_dict`` reads.

A weights-only file (``kind = "weights"``, ``find.weights_only``: what ships as ``pretrained:NAME``
and what ``Model.save(weights_only=True)`` writes) holds the step, settings, metrics and one set
of weights (``weights``: the moving average's or the raw ones) with batch norm's statistics, and
no optimizer, data order or random state: it is checked the same way, less what it does not hold.

Anything wrong is one ``CheckpointError`` naming the file and the value. A key of
``Run.state_dict()`` unknown here is read by no one; a new one gets its check here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from mnistlab import __version__
from mnistlab.config import Config, from_dict, parameter_count, validate
from mnistlab.config.checks import show_int
from mnistlab.config.schema import DENSE_ROUTES
from mnistlab.errors import CheckpointError, ConfigError
from mnistlab.models import StagedModel, model_spec

COUNT_MAX = 2**63 - 1
"""Steps and counters are 64-bit integers in torch."""
EXAMPLES_MAX = 2**40
THREADS_MAX = 1 << 20
WEIGHTS_ONLY = "weights"
"""``state["kind"]`` of a file that holds a model's weights and no training state."""
Expected = dict[str, tuple[torch.Size, torch.dtype]]


class _Bad(Exception):
    """One thing wrong with a state (``check_state`` adds the file)."""


def _fail(reason: str) -> NoReturn:
    raise _Bad(reason)


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, int) and not isinstance(value, bool):
        return show_int(value)
    return f"{value!r:.40}"


def _int(value: Any, what: str, lo: int = 0, hi: int = COUNT_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(f"{what} is {_show(value)}, not a whole number")
    if not lo <= value <= hi:
        _fail(f"{what} is {show_int(value)}, outside {lo}..{show_int(hi)}")
    return value


def _real(value: Any, what: str, lo: float = -math.inf, hi: float = math.inf) -> None:
    """``None`` or a finite number in [lo, hi]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(f"{what} is {_show(value)}, not a number")
    if not (math.isfinite(value) and lo <= value <= hi):
        _fail(f"{what} is {_show(value)}, outside {lo}..{hi}")


def _dict(value: Any, what: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        _fail(f"{what} is {_show(value)} where a table belongs")
    return value


def _tensor(value: Any, what: str, dtype: torch.dtype, shape: tuple[int, ...] | None) -> None:
    if not isinstance(value, torch.Tensor):
        _fail(f"{what} is {_show(value)} where a tensor belongs")
    if value.layout != torch.strided or value.device.type == "meta":
        _fail(f"{what} is a {value.layout} tensor on {value.device}, not a plain one")
    if value.dtype != dtype:
        _fail(f"{what} is a {value.dtype} tensor where mnistlab keeps {dtype}")
    if shape is not None and tuple(value.shape) != shape:
        _fail(f"{what} has shape {tuple(value.shape)} where it has {shape}")


def _match(saved: Any, expected: Expected, what: str) -> dict[str, torch.Tensor]:
    """``saved`` is ``{name: tensor}`` with exactly ``expected``'s names, shapes and dtypes,
    every number finite (and none negative in an integer tensor: counts)."""
    table = _dict(saved, what)
    missing = [n for n in expected if n not in table]
    if missing:
        _fail(f"{what} lacks {missing[0]!r:.80}, which the model has")
    extra = [n for n in table if n not in expected]
    if extra:
        _fail(f"{what} holds {extra[0]!r:.80}, which the model does not have")
    for name, (shape, dtype) in expected.items():
        t = table[name]
        _tensor(t, f"{what} {name}", dtype, tuple(shape))
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            _fail(f"{what} {name} holds NaN or infinite values")
        if not t.is_floating_point() and t.numel() and int(t.min()) < 0:
            _fail(f"{what} {name} holds a negative count")
    return table


def num_classes(tensors: dict[str, torch.Tensor]) -> int | None:
    """Classes of a saved model: the rows of its ``logits`` stage's weight (``logits.weight``, or
    ``logits.linear.weight`` where the stage also flattens); ``None`` if it has none."""
    for name, tensor in tensors.items():
        if (
            isinstance(name, str)
            and name.startswith("logits.")
            and name.endswith("weight")
            and isinstance(tensor, torch.Tensor)
            and tensor.ndim == 2
        ):
            return int(tensor.shape[0])
    return None


def _settings(state: dict[str, Any], path: Path) -> Config:
    try:
        config = from_dict(state["config"], where=f"the config saved in {path}")
        return validate(config, machine=False)
    except ConfigError as exc:
        raise CheckpointError(
            f"checkpoint {path} holds settings this mnistlab ({__version__}) refuses: {exc}"
        ) from None


def _model(config: Config, state: dict[str, Any], shape: tuple[int, int, int]) -> StagedModel:
    """The model the settings build, on the meta device, once the file's count of numbers fits."""
    saved = _dict(state["model"], "model")
    if not all(isinstance(t, torch.Tensor) for t in saved.values()):
        bad = next(k for k, t in saved.items() if not isinstance(t, torch.Tensor))
        _fail(f"model {bad!r:.80} is {_show(saved[bad])} where a tensor belongs")
    classes = num_classes(saved)
    if classes is None:
        _fail("it holds no logits layer (model logits.weight)")
    m = config.model
    count = parameter_count(m, classes, shape)
    held = sum(t.numel() for t in saved.values())
    if held != count:
        _fail(
            f"its weights hold {held:,} numbers where a {m.name} model of its settings "
            f"(model.hidden={','.join(map(str, m.hidden)) or '-'}, {show_int(classes)} classes) "
            f"has {count:,}"
        )
    with torch.device("meta"):
        return StagedModel(model_spec(m.name).stages(m, shape, classes))


def _optimizer(saved: Any, params: Expected) -> None:
    """``{"tensors": {key: {name: tensor}}, "scalars": {name: {key: value}}}``: each tensor
    table shaped like the parameters; each scalar a count or a rate (finite, not negative)."""
    opt = _dict(saved, "optimizer")
    if set(opt) != {"tensors", "scalars"}:
        _fail(f"optimizer holds {sorted(map(str, opt))}, not its tensors and scalars")
    for key, table in _dict(opt["tensors"], "optimizer tensors").items():
        _match(table, params, f"optimizer {key!s:.40}")
    for name, entry in _dict(opt["scalars"], "optimizer scalars").items():
        if name not in params:
            _fail(f"optimizer scalars name {name!r:.80}, which the model does not have")
        for key, value in _dict(entry, f"optimizer scalars of {name}").items():
            what = f"optimizer {key!s:.40} of {name}"
            if isinstance(value, torch.Tensor):
                if value.ndim != 0 or value.is_complex() or value.dtype == torch.bool:
                    _fail(f"{what} is {_show(value)}, not one number")
                value = value.item()
            _real(value, what, lo=0)


def _data(saved: Any, config: Config) -> None:
    data = _dict(saved, "data")
    for key in ("num_examples", "batch_size", "epochs_completed", "index_in_epoch", "perm"):
        if key not in data:
            _fail(f"data order lacks {key}")
    n = _int(data["num_examples"], "data.num_examples", 1, EXAMPLES_MAX)
    batch = _int(data["batch_size"], "data.batch_size", 1)
    if batch != config.train.batch_size:
        _fail(
            f"data.batch_size is {batch} but its settings say "
            f"train.batch_size={config.train.batch_size}"
        )
    _int(data["epochs_completed"], "data.epochs_completed")
    _int(data["index_in_epoch"], "data.index_in_epoch", 0, n)
    perm = data["perm"]
    _tensor(perm, "data.perm", torch.int64, (n,))
    if not torch.equal(torch.sort(perm).values, torch.arange(n)):
        _fail(f"data.perm is not an order of the {n:,} training examples")
    _generator(data.get("generator"), "data.generator")


def _generator(value: Any, what: str) -> None:
    """A CPU generator's state, as ``torch.Generator.set_state`` takes it."""
    if value is None:
        return
    _tensor(value, what, torch.uint8, tuple(torch.get_rng_state().shape))
    try:
        torch.Generator().set_state(value)
    except (RuntimeError, ValueError) as exc:
        _fail(f"{what} is not a generator's state ({str(exc).splitlines()[0][:80]})")


def _rng(saved: Any) -> None:
    rng = _dict(saved, "rng")
    _generator(rng.get("torch"), "rng.torch")
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, list) or len(cuda) > 1024:
        _fail(f"rng.cuda is {_show(cuda)}, not a list of device states")
    for i, state in enumerate(cuda):
        _tensor(state, f"rng.cuda[{i}]", torch.uint8, None)
        if state.ndim != 1 or state.numel() > 4096:
            _fail(f"rng.cuda[{i}] has shape {tuple(state.shape)}, not a device's state")
    if rng.get("numpy") is None:
        return
    numpy = _dict(rng["numpy"], "rng.numpy")
    for key in ("name", "keys", "pos", "has_gauss", "cached"):
        if key not in numpy:
            _fail(f"rng.numpy lacks {key}")
    keys = numpy["keys"]
    _tensor(keys, "rng.numpy.keys", torch.int64, (624,))
    if keys.numel() and not (int(keys.min()) >= 0 and int(keys.max()) < 2**32):
        _fail("rng.numpy.keys holds numbers outside 0..2**32-1")
    pos = _int(numpy["pos"], "rng.numpy.pos", 0, 624)
    has_gauss = _int(numpy["has_gauss"], "rng.numpy.has_gauss", 0, 1)
    _real(numpy["cached"], "rng.numpy.cached")
    if numpy["name"] != "MT19937":
        _fail(f"rng.numpy.name is {_show(numpy['name'])}, not MT19937")
    try:
        np.random.RandomState().set_state(
            ("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, float(numpy["cached"]))
        )
    except (ValueError, TypeError) as exc:
        _fail(f"rng.numpy is not a generator's state ({exc})")


def _metrics(saved: Any, step: int) -> None:
    metrics = _dict(saved, "metrics")
    _real(metrics.get("validation_accuracy"), "metrics.validation_accuracy", 0, 1)
    _real(metrics.get("best_validation_accuracy"), "metrics.best_validation_accuracy", 0, 1)
    _real(metrics.get("last_loss"), "metrics.last_loss")
    if metrics.get("best_step") is not None:
        _int(metrics["best_step"], "metrics.best_step", 0, step)


def _header(header: dict[str, Any], state: dict[str, Any], step: int) -> None:
    """The header (read alone to list and pick checkpoints) says what the state says."""
    if "step" in header and header["step"] != step:
        _fail(f"its header says step {_show(header['step'])} and its data step {step}")
    if "config" in header and header["config"] != state["config"]:
        _fail("its header and its data hold different settings")
    for key in ("validation_accuracy", "best_validation_accuracy"):
        _real(header.get(key), f"header {key}", 0, 1)
    if header.get("best_step") is not None:
        _int(header["best_step"], "header best_step")


def _check(
    state: Any, header: dict[str, Any], path: Path, input_shape: tuple[int, int, int]
) -> Config:
    state = _dict(state, "the state")
    kind = state.get("kind")
    if kind not in (None, WEIGHTS_ONLY):
        _fail(f"its kind is {_show(kind)}, not a training state or {WEIGHTS_ONLY!r}")
    if kind == WEIGHTS_ONLY:
        required: tuple[str, ...] = ("step", "model", "config", "metrics", "weights")
    else:
        required = ("step", "model", "config", "ema", "optimizer", "data", "rng", "metrics")
    missing = [k for k in required if k not in state]
    if missing:
        what = "weights-only file" if kind else "training state"
        _fail(f"it lacks {', '.join(missing)} of a {what}")
    step = _int(state["step"], "step")
    _header(header, state, step)
    config = _settings(state, path)
    model = _model(config, state, input_shape)
    params: Expected = {n: (p.shape, p.dtype) for n, p in model.named_parameters()}
    buffers: Expected = {n: (b.shape, b.dtype) for n, b in model.named_buffers()}
    _match(state["model"], params, "model")
    if buffers or state.get("buffers") is not None:
        _match(state.get("buffers"), buffers, "buffers")
    if kind == WEIGHTS_ONLY:
        if state["weights"] not in ("ema", "raw"):
            _fail(f"its weights are {_show(state['weights'])}, not 'ema' or 'raw'")
        if state.get("ema") is not None or state.get("optimizer") is not None:
            _fail("a weights-only file holds a moving average or optimizer state")
        _metrics(state["metrics"], step)
        return config
    ema = state["ema"]
    if (ema is None) != (config.optim.ema_decay == 0):
        _fail(
            f"its moving average is {'missing' if ema is None else 'there'} though its "
            f"settings say optim.ema_decay={config.optim.ema_decay}"
        )
    if ema is not None:
        ema = _dict(ema, "ema")
        _int(ema.get("num_updates"), "ema.num_updates", 0, step)
        _match(ema.get("shadows"), params, "ema shadows")
    _optimizer(state["optimizer"], params)
    _data(state["data"], config)
    _rng(state["rng"])
    _metrics(state["metrics"], step)
    if state.get("threads") is not None:
        _int(state["threads"], "threads", 0, THREADS_MAX)
    route = state.get("dense_route")
    if route is not None and route not in DENSE_ROUTES[1:]:
        _fail(f"dense_route is {_show(route)}, not one of {', '.join(DENSE_ROUTES[1:])}")
    return config


def check_state(
    state: Any,
    header: dict[str, Any],
    path: Path,
    input_shape: tuple[int, int, int],
) -> Config:
    """The validated settings of a decoded checkpoint, or one ``CheckpointError`` naming the
    file and what is wrong (see the module's docstring for what is checked)."""
    try:
        return _check(state, header, path, input_shape)
    except _Bad as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a valid training state: {exc} (it was edited or not "
            "written by mnistlab); use another checkpoint of the run"
        ) from None
