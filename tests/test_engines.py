"""The engines behind the loop compute the same training: the fused dense step's ``exact`` route
is bit-equal to autograd on the CPU (its other routes: tests/test_routes.py); the device-table
step (the one CUDA captures) and its compiled form agree with it within 1e-5 after 100 steps."""

from __future__ import annotations

import pytest
import torch

from mnistlab.io.checkpoint import CheckpointCallback, load_checkpoint
from mnistlab.training import build_run
from mnistlab.training.captured import TabledAutogradEngine, captured_reason
from mnistlab.training.dense import FusedDenseEngine, fused_reason
from mnistlab.training.dense_tables import TabledDenseEngine
from mnistlab.training.engine import AutogradEngine
from mnistlab.training.loop import _Loop
from mnistlab.training.steps import select_engine

from .conftest import small_config
from .dist_worker import as_dtype


def trained(config, data, engine=None):
    run = build_run(config, data)
    loop = _Loop(run)
    if engine is not None:
        loop.engine = engine(run)
    loop.run()
    shadows = [s.clone() for s in run.ema.shadows] if run.ema else []
    return [p.detach().clone() for p in run.parameters()] + shadows, run.last_loss, loop


@pytest.mark.parametrize("preset", ["seed-softmax", "seed-mlp", "seed-mlp-book"])
def test_fused_step_is_bit_equal_to_autograd(sample_splits, preset):
    config = small_config(preset, "train.steps=100", "train.route=exact")
    fused, loss_f, loop = trained(config, sample_splits)
    assert isinstance(loop.engine, FusedDenseEngine)
    auto, loss_a, loop = trained(
        small_config(preset, "train.steps=100", "train.fused=false"), sample_splits
    )
    assert isinstance(loop.engine, AutogradEngine)
    assert loss_f == loss_a
    for a, b in zip(fused, auto, strict=True):
        assert torch.equal(a, b)


def test_fused_step_keeps_gradients_in_grad(sample_splits):
    run = build_run(small_config("seed-mlp", "train.steps=1"), sample_splits)
    _Loop(run).run()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in run.parameters())


def test_what_the_fused_step_does_not_cover_falls_back(sample_splits):
    for overrides, why in [
        (("model.name=lenet",), "not dense"),
        (("optim.name=momentum",), "plain SGD"),
        (("train.loss=naive",), "naive"),
    ]:
        run = build_run(small_config("seed-mlp", *overrides), sample_splits)
        reason = fused_reason(run)
        assert reason is not None and why in reason
        engine, said = select_engine(run)
        assert isinstance(engine, AutogradEngine) and said == reason


def tables(compile_step: bool):
    return lambda run: TabledDenseEngine(run, compile_step=compile_step, graphs=False)


def test_device_table_step_agrees_within_1e5(sample_splits):
    config = small_config("seed-mlp", "train.steps=100", "train.route=exact")
    eager, loss_e, _ = trained(config, sample_splits)
    table, loss_t, _ = trained(config, sample_splits, tables(False))
    assert abs(loss_e - loss_t) <= 1e-5 * abs(loss_e)
    assert max(float((a - b).abs().max()) for a, b in zip(eager, table, strict=True)) < 1e-5


def test_device_table_step_trains_what_the_model_holds_and_leaves_it_there(sample_splits):
    """The table step runs on its own flat buffers: a state loaded into the model after the
    engine was made (as a resume does) is what it trains on, and at every boundary the model's
    parameters, gradients and shadows hold what it computed."""
    config = small_config("seed-mlp", "train.steps=100", "train.log_every=30", "train.route=exact")
    reference, _, _ = trained(config, sample_splits)
    halfway = build_run(small_config("seed-mlp", "train.steps=50"), sample_splits)
    _Loop(halfway).run()

    run = build_run(config, sample_splits)
    loop = _Loop(run)
    loop.engine = TabledDenseEngine(run, compile_step=False, graphs=False)
    run.load_state_dict(halfway.state_dict())
    loop.run()
    assert run.ema is not None
    got = [p.detach() for p in run.parameters()] + list(run.ema.shadows)
    assert max(float((a - b).abs().max()) for a, b in zip(got, reference, strict=True)) < 1e-5
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in run.parameters())


@pytest.fixture
def float64():
    """Models built in float64 for the test (the default dtype put back after it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def everything(run) -> list[torch.Tensor]:
    """Parameters, shadows, batch norm's buffers and momentum buffers of a run."""
    model = run.strategy.model
    tensors = [p.detach().clone() for p in run.parameters()]
    tensors += [s.clone() for s in run.ema.shadows] if run.ema else []
    tensors += [b.clone().double() for b in model.buffers()]
    state = run.optimizer.state
    tensors += [state[p]["momentum_buffer"].clone() for p in run.parameters() if p in state]
    return tensors


@pytest.mark.parametrize(
    "preset,overrides",
    [
        # batch norm, Nesterov, the linear schedule with warm-up, no moving average
        ("speedrun", ["model.hidden=4,8", "optim.warmup_steps=20"]),
        # dropout, momentum, the moving average, L2 on kernels and weights
        ("lenet", ["model.hidden=16"]),
        # plain SGD on a dense model through autograd (the naive loss keeps it off the fused step)
        ("seed-mlp", ["train.loss=naive", "optim.lr=0.001"]),
    ],
)
def test_captured_autograd_step_agrees_with_autograd_within_1e5(
    sample_splits, float64, preset, overrides
):
    """The step CUDA captures, run eagerly on the CPU: the same training as the autograd
    engine within 1e-5 after 100 steps, the loss of every step included, and the optimizer's
    own state left behind. In float64: only the rounding of ``lr · update`` differs, and in
    float32 LeNet's momentum grows that last bit to 1e-2 in 60 steps (as it would any change
    of summation order)."""
    data = as_dtype(sample_splits, torch.float64)
    config = small_config(
        preset, "train.steps=100", "train.log_every=25", "train.batch_size=25", *overrides
    )
    auto = build_run(config, data)
    auto_loop = _Loop(auto)
    assert isinstance(auto_loop.engine, AutogradEngine)
    auto_loop.run()
    run = build_run(config, data)
    loop = _Loop(run)
    assert captured_reason(run) is None
    loop.engine = TabledAutogradEngine(run, graphs=False)
    loop.run()
    assert abs(run.last_loss - auto.last_loss) <= 1e-5 * abs(auto.last_loss)
    got, ref = everything(run), everything(auto)
    assert len(got) == len(ref)
    assert max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True)) < 1e-5
    assert run.optimizer.param_groups[0]["lr"] == auto.optimizer.param_groups[0]["lr"]
    assert run.ema is None or run.ema.num_updates == auto.ema.num_updates == 100


def test_captured_step_resumes_what_autograd_saved(sample_splits, float64, tmp_path):
    """Checkpoints cross between the two: a run saved by the autograd engine goes on in the
    tabled step from its momentum buffers and random stream, and ends where autograd alone
    ends."""
    data = as_dtype(sample_splits, torch.float64)
    config = small_config("lenet", "model.hidden=16", "train.steps=20", "train.log_every=10")
    whole = build_run(config, data, callbacks=[CheckpointCallback(tmp_path, every=10)])
    _Loop(whole).run()
    halfway = load_checkpoint(tmp_path / "checkpoints" / "step-000010.pt").state
    run = build_run(config, data)
    run.load_state_dict(halfway)
    loop = _Loop(run)
    loop.engine = TabledAutogradEngine(run, graphs=False)
    loop.run()
    got, ref = everything(run), everything(whole)
    assert max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True)) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize(
    "preset,overrides",
    [
        ("speedrun", ["model.hidden=4,8", "optim.warmup_steps=20"]),
        ("lenet", ["model.hidden=16", "model.dropout=0"]),
        # Dropout: a replayed graph draws from the generator at the offsets the uncaptured steps
        # would use (torch moves the generator on by the graph's whole draw at each replay), so
        # the masks, and the training, are the same.
        ("lenet", ["model.hidden=16"]),
    ],
)
def test_captured_step_on_cuda_agrees_with_uncaptured_autograd(
    sample_splits, float64, preset, overrides
):
    """On a GPU, the default for these models is the step captured as a CUDA graph: it must
    really be captured (no fall-back) and train as the uncaptured autograd engine does."""
    data = as_dtype(sample_splits, torch.float64)
    settings = ["train.device=cuda", "train.steps=60", "train.log_every=20", "train.batch_size=25"]
    config = small_config(preset, *settings, *overrides)
    auto = build_run(small_config(preset, *settings, *overrides, "train.cuda_graphs=off"), data)
    auto_loop = _Loop(auto)
    assert isinstance(auto_loop.engine, AutogradEngine)
    auto_loop.run()
    run = build_run(config, data)
    loop = _Loop(run)
    assert isinstance(loop.engine, TabledAutogradEngine)
    loop.run()
    assert loop.engine.name == "autograd+tables+cuda-graphs", "the capture fell back"
    got, ref = everything(run), everything(auto)
    assert max(float((a - b).abs().max()) for a, b in zip(got, ref, strict=True)) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_captured_dense_step_on_cuda_agrees_with_the_fused_step(sample_splits):
    """On a GPU, seed-mlp's default is the flat-buffer step captured as CUDA graphs: it must
    train as the eager fused step does there."""
    settings = ["train.device=cuda", "train.steps=100"]
    eager, loss_e, loop = trained(
        small_config("seed-mlp", *settings, "train.cuda_graphs=off"), sample_splits
    )
    assert loop.engine.name == "fused"
    graph, loss_g, loop = trained(small_config("seed-mlp", *settings), sample_splits)
    assert loop.engine.name == "fused+tables+cuda-graphs"
    assert abs(loss_e - loss_g) <= 1e-5 * abs(loss_e)
    assert max(float((a - b).abs().max()) for a, b in zip(eager, graph, strict=True)) < 1e-5


def test_what_the_captured_step_does_not_cover(sample_splits):
    run = build_run(small_config("lenet", "optim.name=adam", "optim.lr=0.001"), sample_splits)
    assert "adam" in (captured_reason(run) or "")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_step_agrees_with_the_eager_step_within_1e5(sample_splits):
    """torch.compile of the step (inductor's C++ backend here) against the eager fused step."""
    config = small_config("seed-mlp", "train.steps=100", "train.route=exact")
    eager, loss_e, _ = trained(config, sample_splits)
    compiled, loss_c, loop = trained(config, sample_splits, tables(True))
    assert "compiled" in loop.engine.name, "compilation fell back to eager"
    assert abs(loss_e - loss_c) <= 1e-5 * abs(loss_e)
    assert max(float((a - b).abs().max()) for a, b in zip(eager, compiled, strict=True)) < 1e-5


def test_a_failed_compile_says_so_and_trains_uncompiled(sample_splits, monkeypatch, capsys):
    """Compilation is an optimisation: when it fails the run says why in one line and goes on
    with the same step uncompiled, the weights untouched by the failed attempt."""

    def broken(fn, **_kwargs):
        def fail(*_args, **_kw):
            raise RuntimeError("no C++ compiler here\nmore detail")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    config = small_config("seed-mlp", "train.steps=100", "train.route=exact")
    eager, _, _ = trained(config, sample_splits)
    table, _, loop = trained(config, sample_splits, tables(True))
    assert loop.engine.name == "fused+tables"
    err = capsys.readouterr().err
    assert (
        "mnistlab: torch.compile failed (RuntimeError: no C++ compiler here); "
        "running the step uncompiled\n"
    ) in err
    assert max(float((a - b).abs().max()) for a, b in zip(eager, table, strict=True)) < 1e-5


def test_fused_runs_never_build_the_optimizer_and_resume_across_engines(sample_splits):
    """The fused step updates the weights itself: its run builds no torch.optim optimizer (whose
    construction imports torch's compiler), and checkpoints move between the two engines."""
    fused = build_run(small_config("seed-mlp", "train.steps=50"), sample_splits)
    _Loop(fused).run()
    assert fused.strategy._optimizer is None
    state = fused.state_dict()
    assert state["optimizer"] == {"tensors": {}, "scalars": {}}

    auto = build_run(
        small_config("seed-mlp", "train.steps=100", "train.fused=false"), sample_splits
    )
    auto.load_state_dict(state)
    _Loop(auto).run()
    again = build_run(small_config("seed-mlp", "train.steps=150"), sample_splits)
    again.load_state_dict(auto.state_dict())
    _Loop(again).run()
    assert again.step == 150 and all(torch.isfinite(p).all() for p in again.parameters())


def test_tf32_stays_off_unless_a_run_asks(sample_splits):
    """torch's defaults let cuDNN convolutions use TF32; a run sets both switches from
    train.tf32 (exact float32 unless asked), whatever they were before."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        build_run(small_config("seed-mlp", "train.steps=1"), sample_splits)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        build_run(small_config("seed-mlp", "train.steps=1", "train.tf32=true"), sample_splits)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


# What makes the host wait for the device on a GPU: a tensor read as a Python value (``item``,
# ``bool``, ``float``: all ``_local_scalar_dense``), and the ops whose output size depends on the
# data. A captured step cannot hold one, and an uncaptured one stalls the queue at each.
WAITING_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten.equal.default,
}


def waits_in(engine, run, n) -> list[str]:
    """The waiting ops one stretch of ``n`` steps dispatches (the loop's boundaries excluded)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in WAITING_OPS:
                seen.append(str(func))
            return func(*args, **(kwargs or {}))

    losses = torch.zeros(n)
    with Watch():
        engine.run(run, n, losses)
    run.step += n
    return seen


@pytest.mark.parametrize(
    "preset,engine",
    [
        ("seed-mlp", FusedDenseEngine),
        ("seed-mlp", lambda run: TabledDenseEngine(run, compile_step=False, graphs=False)),
        ("lenet", lambda run: TabledAutogradEngine(run, graphs=False)),
        ("speedrun", lambda run: TabledAutogradEngine(run, graphs=False)),
        ("lenet", AutogradEngine),
    ],
)
def test_no_step_waits_for_the_device(sample_splits, preset, engine):
    """Between two boundaries no step asks the device for a value (losses are read at the
    boundary, in one piece): on a GPU the host runs ahead and the tabled steps can be captured.
    Checked on the CPU by watching every op the stretch dispatches."""
    small = {
        "lenet": ["model.hidden=16"],
        "speedrun": ["model.hidden=4,8", "optim.warmup_steps=10"],
    }.get(preset, [])
    config = small_config(preset, "train.steps=40", "train.log_every=20", *small)
    run = build_run(config, sample_splits)
    stepper = engine(run)
    assert waits_in(stepper, run, 2) == []  # the first stretch: buffers made, nothing read
    assert waits_in(stepper, run, 20) == []
