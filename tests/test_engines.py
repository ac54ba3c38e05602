"""The engines behind the loop compute the same training: the fused dense step is bit-equal to
autograd on the CPU; the device-table step (the one CUDA captures) and its compiled form agree
with it within 1e-5 after 100 steps."""

from __future__ import annotations

import pytest
import torch

from mnistlab.train import build_run
from mnistlab.train.loop import _Loop
from mnistlab.train.steps import (
    AutogradEngine,
    FusedDenseEngine,
    TabledDenseEngine,
    fused_reason,
    select_engine,
)

from .conftest import small_config


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
    config = small_config(preset, "train.steps=100")
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
    config = small_config("seed-mlp", "train.steps=100")
    eager, loss_e, _ = trained(config, sample_splits)
    table, loss_t, _ = trained(config, sample_splits, tables(False))
    assert abs(loss_e - loss_t) <= 1e-5 * abs(loss_e)
    assert max(float((a - b).abs().max()) for a, b in zip(eager, table, strict=True)) < 1e-5


def test_device_table_step_trains_what_the_model_holds_and_leaves_it_there(sample_splits):
    """The table step runs on its own flat buffers: a state loaded into the model after the
    engine was made (as a resume does) is what it trains on, and at every boundary the model's
    parameters, gradients and shadows hold what it computed."""
    config = small_config("seed-mlp", "train.steps=100", "train.log_every=30")
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


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_step_agrees_with_the_eager_step_within_1e5(sample_splits):
    """torch.compile of the step (inductor's C++ backend here) against the eager fused step."""
    config = small_config("seed-mlp", "train.steps=100")
    eager, loss_e, _ = trained(config, sample_splits)
    compiled, loss_c, loop = trained(config, sample_splits, tables(True))
    assert "compiled" in loop.engine.name, "compilation fell back to eager"
    assert abs(loss_e - loss_c) <= 1e-5 * abs(loss_e)
    assert max(float((a - b).abs().max()) for a, b in zip(eager, compiled, strict=True)) < 1e-5


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
