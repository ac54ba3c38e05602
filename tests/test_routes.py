"""The fused dense step's routes (``training/routes.py``): ``mkl``, ``onednn`` and ``trimmed``
train what ``exact`` trains, to float32's rounding; their folded update is the same mathematics (checked in
float64); each resumes bit-equal to an uninterrupted run by its own route; ``auto`` follows a
fixed rule per CPU and a resume keeps the route its checkpoint recorded."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mnistlab.config import resolve
from mnistlab.errors import CheckpointError, ConfigError
from mnistlab.io.checkpoint import load_checkpoint
from mnistlab.training import build_run, routes
from mnistlab.training.dense import FusedDenseEngine
from mnistlab.training.loop import _Loop
from mnistlab.training.trimmed import TrimmedDenseEngine, pixel_order, prefix_lengths

from .conftest import small_config
from .dist_worker import as_dtype
from .forge import forge

FIXTURE = Path(__file__).parent / "fixtures" / "v1-seed-mlp-step4.pt"

ONEDNN = torch.backends.mkldnn.is_available()
FAST = [
    "mkl",
    pytest.param("onednn", marks=pytest.mark.skipif(not ONEDNN, reason="no oneDNN")),
    "trimmed",
]


def trained(config, data, state=None):
    run = build_run(config, data)
    if state is not None:
        run.load_state_dict(state)
    loop = _Loop(run)
    loop.run()
    assert run.ema is not None
    tensors = [p.detach().clone() for p in run.parameters()] + [s.clone() for s in run.ema.shadows]
    return tensors, run, loop.engine


def largest_difference(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("route", FAST)
def test_a_fast_route_trains_what_exact_trains_to_float32s_rounding(sample_splits, route):
    exact, run_e, engine = trained(
        small_config("seed-mlp", "train.steps=100", "train.route=exact"), sample_splits
    )
    assert engine.name == "fused"
    fast, run_f, engine = trained(
        small_config("seed-mlp", "train.steps=100", f"train.route={route}"), sample_splits
    )
    assert isinstance(engine, FusedDenseEngine) and engine.name == f"fused+{route}"
    assert type(engine) is (TrimmedDenseEngine if route == "trimmed" else FusedDenseEngine)
    assert abs(run_f.last_loss - run_e.last_loss) <= 1e-5 * abs(run_e.last_loss)
    assert largest_difference(exact, fast) < 1e-5
    assert any(not torch.equal(a, b) for a, b in zip(exact, fast, strict=True)), (
        "the route changed nothing: is it really running?"
    )


@pytest.mark.parametrize("route", ["mkl", "trimmed"])
def test_the_folded_update_is_the_same_mathematics(sample_splits, route):
    """In float64 the rounding of a reordered sum is ~1e-16: the folded update (``W ← (1 -
    lr·l2)·W - lr·gᵀx``) and autograd's L2 + SGD then agree to 1e-10 after 100 steps, the
    gradient left in ``.grad`` at the boundary included."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        data = as_dtype(sample_splits, torch.float64)
        steps = ["train.steps=100", "train.log_every=25"]
        folded, run_f, engine = trained(
            small_config("seed-mlp", *steps, f"train.route={route}"), data
        )
        assert engine.name == f"fused+{route}"
        auto, run_a, engine = trained(small_config("seed-mlp", *steps, "train.fused=false"), data)
        assert engine.name == "autograd"
        assert largest_difference(folded, auto) < 1e-10
        grads_f = [p.grad for p in run_f.parameters()]
        grads_a = [p.grad for p in run_a.parameters()]
        assert largest_difference(grads_f, grads_a) < 1e-10
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("route", ["exact", *FAST])
def test_each_route_resumes_bit_equal(sample_splits, route):
    whole, _, _ = trained(
        small_config("seed-mlp", "train.steps=100", f"train.route={route}"), sample_splits
    )
    _, halfway, _ = trained(
        small_config("seed-mlp", "train.steps=50", f"train.route={route}"), sample_splits
    )
    state = halfway.state_dict()
    assert state["dense_route"] == route
    again, _, engine = trained(
        small_config("seed-mlp", "train.steps=100", f"train.route={route}"), sample_splits, state
    )
    assert engine.route == route
    for a, b in zip(whole, again, strict=True):
        assert torch.equal(a, b)


def test_auto_resumes_by_the_route_its_checkpoint_recorded(sample_splits):
    # On a CPU, auto never picks exact: a checkpoint made by exact must go on by exact.
    assert routes.auto_route(torch.device("cpu"), torch.float32) != "exact"
    whole, _, _ = trained(
        small_config("seed-mlp", "train.steps=100", "train.route=exact"), sample_splits
    )
    _, halfway, _ = trained(
        small_config("seed-mlp", "train.steps=50", "train.route=exact"), sample_splits
    )
    again, run, engine = trained(
        small_config("seed-mlp", "train.steps=100", "train.route=auto"),
        sample_splits,
        halfway.state_dict(),
    )
    assert engine.route == "exact" and run.dense_route == "exact"
    for a, b in zip(whole, again, strict=True):
        assert torch.equal(a, b)


def test_the_default_route_is_exact(sample_splits):
    _, run, engine = trained(small_config("seed-mlp", "train.steps=10"), sample_splits)
    assert engine.route == "exact" and engine.name == "fused"
    assert run.state_dict()["dense_route"] == "exact"


def test_a_fresh_auto_run_records_the_route_of_its_cpu(sample_splits):
    _, run, engine = trained(
        small_config("seed-mlp", "train.steps=10", "train.route=auto"), sample_splits
    )
    # small_config trains on one thread: auto's rule gives the MLP the trimmed route there.
    chosen = routes.auto_route(torch.device("cpu"), torch.float32, hidden=True, threads=1)
    assert chosen == "trimmed" and torch.get_num_threads() == 1
    assert engine.route == chosen and run.state_dict()["dense_route"] == chosen


@pytest.mark.parametrize(
    "vendor,flags,device,dtype,hidden,threads,expected",
    [
        ("AuthenticAMD", {"avx2", "avx512f"}, "cpu", torch.float32, True, 1, "trimmed"),
        ("GenuineIntel", {"avx2", "avx512f"}, "cpu", torch.float32, True, 1, "trimmed"),
        ("AuthenticAMD", {"avx2", "avx512f"}, "cpu", torch.float32, True, 2, "onednn"),
        ("GenuineIntel", {"avx2", "avx512f"}, "cpu", torch.float32, True, 2, "mkl"),
        ("AuthenticAMD", {"avx2", "avx512f"}, "cpu", torch.float32, False, 1, "onednn"),
        ("GenuineIntel", {"avx2", "avx512f"}, "cpu", torch.float32, False, 1, "mkl"),
        ("AuthenticAMD", {"avx2"}, "cpu", torch.float32, False, 2, "mkl"),
        ("AuthenticAMD", {"avx2", "avx512f"}, "cpu", torch.float64, True, 1, "mkl"),
        ("AuthenticAMD", {"avx2", "avx512f"}, "cuda", torch.float32, True, 1, "exact"),
    ],
)
def test_auto_follows_a_fixed_rule_per_cpu(
    monkeypatch, vendor, flags, device, dtype, hidden, threads, expected
):
    monkeypatch.setattr(routes, "_cpu_flags", lambda: (vendor, frozenset(flags)))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    got = routes.auto_route(torch.device(device), dtype, hidden=hidden, threads=threads)
    assert got == expected


def test_onednn_where_it_cannot_run_is_one_clear_error(sample_splits):
    data = as_dtype(sample_splits, torch.float64)
    run = build_run(small_config("seed-mlp", "train.route=onednn"), data)
    with pytest.raises(ConfigError, match="train.route=onednn needs float32 on the CPU"):
        FusedDenseEngine(run)


def test_trimmed_off_the_cpu_is_one_clear_error(sample_splits, monkeypatch):
    run = build_run(small_config("seed-mlp", "train.route=trimmed"), sample_splits)
    monkeypatch.setattr(run.strategy, "device", torch.device("cuda"))
    with pytest.raises(ConfigError, match="train.route=trimmed runs on the CPU"):
        routes.choose_route(run)


def test_an_unknown_route_names_the_choices():
    with pytest.raises(
        ConfigError, match="train.route must be one of auto, exact, mkl, onednn, trimmed"
    ):
        resolve("seed-mlp", None, ["train.route=onedn"])


@pytest.mark.parametrize("route", ["exact", *FAST])
def test_weight_decay_keeps_float32s_accuracy_over_many_steps(sample_splits, route):
    """With every image black, the first layer's data gradient is exactly zero and L2 alone moves
    its weights: after 400 steps they must be ``W·Π(1 - lr·l2)`` to float32's rounding, step by
    step (a random walk of half-ulps). Folding the decay into a product's ``beta = 1 - lr·l2``
    fails this: that ``beta`` rounds to float32's spacing near 1 (6e-8) while ``lr·l2`` is
    1e-5, so each step decays by up to 0.3% too much or too little, always the same way."""
    from dataclasses import replace

    from mnistlab.training.objective import learning_rate

    black = replace(sample_splits.train, images=torch.zeros_like(sample_splits.train.images))
    data = replace(sample_splits, train=black)
    steps = 400
    config = small_config("seed-mlp", f"train.steps={steps}", f"train.route={route}")
    run = build_run(config, data)
    start = run.parameters()[0].detach().double().clone()
    _Loop(run).run()
    truth = start.clone()
    for step in range(steps):
        lr = learning_rate(step, config.optim, run.decay_steps, steps)
        truth -= lr * (config.optim.l2 * truth)
    got = run.parameters()[0].detach().double()
    relative = float(((got - truth).abs() / truth.abs().clamp_min(1e-3)).max())
    assert relative < 2e-6, f"{route}: decay off by {relative:.2g} relative after {steps} steps"


@pytest.mark.parametrize("route", ["exact", "mkl", "onednn", "trimmed", None])
def test_a_recorded_route_loads(route, tmp_path):
    state = copy.deepcopy(load_checkpoint(FIXTURE).state)
    state["dense_route"] = route
    assert load_checkpoint(forge(tmp_path / "x.pt", state)).state.get("dense_route") == route


@pytest.mark.parametrize("route", ["auto", "cuda-magic", 3, ["mkl"]])
def test_a_forged_route_is_refused(route, tmp_path):
    """The recorded route picks the code a resume runs: only the routes a run records load."""
    state = copy.deepcopy(load_checkpoint(FIXTURE).state)
    state["dense_route"] = route
    path = forge(tmp_path / "x.pt", state)
    with pytest.raises(CheckpointError, match="dense_route"):
        load_checkpoint(path)


def test_the_pixel_order_and_each_batchs_reach():
    """Pixels by how many images ink them, most first, ties by position; an image's reach is
    the prefix of that order holding every pixel it inks; a batch's prefix is its images'
    furthest reach, rounded up to 16 and at most the width."""
    images = torch.zeros(4, 40)
    images[:, 5] = 1.0  # inked by all four
    images[:3, 2] = 0.5  # by three
    images[0, 30] = 0.2  # by one
    images[1, 7] = 0.1  # by one too: before pixel 30 by position
    order, reach = pixel_order(images, chunk=3)  # a chunk smaller than the set
    assert order[:4].tolist() == [5, 2, 7, 30]
    assert reach.tolist() == [4, 3, 2, 1]
    batches = torch.tensor([[3, 3], [1, 2], [0, 1]])
    assert prefix_lengths(reach, batches, 40) == [16, 16, 16]
    assert prefix_lengths(reach, batches, 3) == [3, 3, 3]  # never past the width


def test_trimming_skips_only_pixels_no_image_of_the_batch_inks(sample_splits):
    """The trimmed products equal the full ones: a batch's prefix holds every pixel it inks."""
    images = sample_splits.train.images
    order, reach = pixel_order(images)
    batches = torch.arange(len(images) // 50 * 50).view(-1, 50)
    for batch, length in zip(batches, prefix_lengths(reach, batches, images.shape[1]), strict=True):
        x = images[batch][:, order]
        assert x[:, length:].count_nonzero() == 0
