"""Presets, overrides, TOML and the messages for bad settings."""

import re
from dataclasses import replace

import pytest

from mnistlab.config import PRESETS, from_dict, load_toml, preset_config, resolve, to_dict, to_toml
from mnistlab.errors import ConfigError


def test_presets_follow_the_classic_programs():
    mlp = preset_config("seed-mlp")
    assert mlp.model.hidden == (500,) and mlp.model.init == "normal"
    assert (mlp.optim.lr, mlp.optim.lr_decay, mlp.optim.staircase) == (0.1, 0.99, False)
    assert (mlp.optim.l2, mlp.optim.ema_decay) == (1e-4, 0.99)
    assert (mlp.train.steps, mlp.train.batch_size, mlp.train.eval_every) == (30_000, 100, 500)
    book = preset_config("seed-mlp-book")
    assert (book.model.init, book.optim.lr, book.optim.staircase) == ("truncated_normal", 0.8, True)
    soft = preset_config("seed-softmax")
    assert soft.model.name == "softmax" and soft.optim.lr == 0.5 and soft.train.steps == 1000
    assert soft.optim.ema_decay == 0 and soft.optim.l2 == 0
    assert preset_config("lenet").model.name == "lenet"
    assert set(PRESETS) == {
        "seed-softmax",
        "seed-mlp",
        "seed-mlp-book",
        "lenet",
        "speedrun",
        "speedrun-lite",
        "speedrun-pool",
    }


def test_speedrun_pool_is_the_lite_recipe_pooling_first():
    lite, pool = preset_config("speedrun-lite"), preset_config("speedrun-pool")
    assert pool.model.pool_first and not lite.model.pool_first
    assert replace(pool.model, pool_first=False) == lite.model
    assert pool.optim == lite.optim and pool.train == lite.train


def test_pool_first_is_a_setting_of_the_cnn_only():
    with pytest.raises(ConfigError, match="model.pool_first is a setting of the cnn"):
        resolve("seed-mlp", None, ["model.pool_first=true"])


def test_overrides_are_typed():
    c = resolve(
        "seed-mlp",
        None,
        [
            "train.steps=2000",
            "optim.lr=0.2",
            "model.hidden=300,100",
            "optim.staircase=true",
            "train.seed=5",
            "optim.ema_decay=0.999",
        ],
    )
    assert c.train.steps == 2000 and c.optim.lr == 0.2 and c.model.hidden == (300, 100)
    assert c.optim.staircase is True and c.train.seed == 5 and c.optim.ema_decay == 0.999
    assert resolve(None, None, ["train.steps=1_000"]).train.steps == 1000


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.learning_rate=0.2", "optim.lr"),
        ("train.step=10", "train.steps"),
        ("optim.l2_reg=0.1", "optim.l2"),
        ("trian.batch_size=5", "train.batch_size"),
    ],
)
def test_unknown_key_names_the_nearest(override, expected):
    with pytest.raises(ConfigError, match=f"did you mean '{expected}'"):
        resolve("seed-mlp", None, [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=ten", "train.steps expects an integer"),
        ("train.steps=1.5", "train.steps expects an integer"),
        ("optim.lr=fast", "optim.lr expects a number"),
        ("optim.staircase=maybe", "optim.staircase expects true or false"),
        ("train.steps=0", "train.steps must be at least 1"),
        ("optim.ema_decay=1.5", "optim.ema_decay must be in"),
        ("model.name=resnet", "model.name must be one of"),
        ("train.steps", "KEY=VALUE"),
    ],
)
def test_bad_values_are_clear(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve("seed-mlp", None, [override])


def test_unknown_preset():
    with pytest.raises(ConfigError, match="did you mean 'seed-mlp'"):
        preset_config("seed_mlp")


def test_toml_round_trip(tmp_path):
    c = resolve("seed-mlp-book", None, ["train.steps=123", "model.hidden=64,32"])
    path = tmp_path / "run.toml"
    path.write_text(to_toml(c))
    assert load_toml(path) == c
    assert from_dict(to_dict(c)) == c


def test_toml_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "seed-softmax"\n[train]\nsteps = 50\n[optim]\nlr = 0.3\n')
    c = resolve(None, path, ["train.steps=60"])
    assert c.preset == "seed-softmax" and c.optim.lr == 0.3 and c.train.steps == 60


def test_toml_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[trainn]\nsteps = 1\n")
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_toml(unknown)
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.l2=nan", "optim.l2 must be a finite number; got nan"),
        ("model.init_std=inf", "model.init_std must be a finite number; got inf"),
        ("optim.momentum=nan", "optim.momentum must be a finite number; got nan"),
        ("optim.lr=-inf", "optim.lr must be a finite number"),
        ("model.bias_init=nan", "model.bias_init must be a finite number"),
        ("data.validation_size=0", "data.validation_size must be at least 1"),
        ("data.validation_size=-5", "data.validation_size must be at least 1.*got -5"),
        ("train.seed=99999999999999999999999", r"train.seed must be between 0 and \d+"),
        ("train.seed=-1", "train.seed must be between 0"),
        ("train.threads=100000", "more than the .* CPU cores this process may use"),
        ("train.steps=-5", "train.steps must be at least 1; got -5"),
        (
            "model.hidden=1000000000",
            "model.hidden=1000000000 makes a mlp model of 795,000,000,010 parameters",
        ),
        ("optim.momentum=-0.5", r"optim.momentum must be in \[0, 1\)"),
        ("optim.schedule=cosine", "optim.schedule must be one of exponential, linear"),
        ("optim.warmup_steps=-1", "optim.warmup_steps must be 0"),
        ("optim.name=nesterow", "did you mean 'nesterov'"),
    ],
)
def test_values_that_cannot_work_are_refused_up_front(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve("seed-mlp", None, [override])


def test_model_size_check_names_the_memory(monkeypatch):
    from mnistlab.config import checks

    monkeypatch.setattr(checks, "available_memory", lambda: 400_000_000)  # 400 MB
    with pytest.raises(ConfigError, match=r"about .* to train .* has 400.0 MB of memory"):
        resolve("seed-mlp", None, ["model.hidden=20000"])
    assert resolve("seed-mlp", None, ["model.hidden=100"]).model.hidden == (100,)


@pytest.mark.parametrize(
    ("override", "key", "fits"),
    [
        ("train.batch_size=1000000", "train.batch_size", r"at most about [\d,]+ fits"),
        ("train.log_every=1000000000", "train.log_every", r"at most about [\d,]+ fits"),
    ],
)
def test_memory_check_counts_activations_and_names_the_setting(monkeypatch, override, key, fits):
    """A batch too big for memory was a raw allocation error: the check counted parameters only."""
    from mnistlab.config import checks

    monkeypatch.setattr(checks, "available_memory", lambda: 2_000_000_000)  # 2 GB
    with pytest.raises(ConfigError) as caught:
        resolve("seed-mlp", None, [override])
    assert re.match(rf"^{key}=.* needs about .* lower {key} \({fits}\)$", str(caught.value))
    message = str(caught.value)  # what it says fits, fits
    most = int(message.rsplit("at most about ", 1)[1].split()[0].replace(",", ""))
    assert resolve("seed-mlp", None, [f"{key}={most}"]).train is not None
    with pytest.raises(ConfigError, match=f"lower {key}"):
        resolve("seed-mlp", None, [f"{key}={most * 11 // 10}"])


def test_memory_parts_follow_the_model():
    """A step's layer outputs grow with the batch and the layers; the data does not."""
    from mnistlab.config.checks import memory_parts

    small, big = (memory_parts(resolve("lenet", None, [f"train.batch_size={b}"])) for b in (10, 20))
    assert big["train.batch_size"] == 2 * small["train.batch_size"]
    assert big["data"] == small["data"] == 70_000 * (784 * 4 + 8)
    mlp = memory_parts(resolve("seed-mlp", None, []))
    assert mlp["train.batch_size"] == 100 * (4 * (784 + 2 * (500 + 500 + 10 + 10)) + 8)
    assert small["train.batch_size"] > 10 * mlp["train.batch_size"] // 100  # convolutions


@pytest.mark.parametrize(
    "override",
    [
        "train.steps=100000000000000000000000",
        "train.log_every=100000000000000000000000",
        "train.eval_every=100000000000000000000000",
        "checkpoint.every=100000000000000000000000",
        "tracking.histogram_every=100000000000000000000000",
        "optim.decay_steps=100000000000000000000000",
        "optim.warmup_steps=100000000000000000000000",
        "model.hidden=100000000000000000000000",
    ],
)
def test_integers_beyond_64_bits_are_refused(override):
    key = override.split("=")[0]
    with pytest.raises(
        ConfigError, match=rf"^{key}=about 10\*\*23 is out of range: .*\(2\*\*63-1\)$"
    ):
        resolve("seed-mlp", None, [override])


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ("foo.bar=1", "with the sections data, model, optim, train, parallel, checkpoint"),
        ("optim.xyz=1", "[optim] holds name, lr, schedule"),
        ("zzz=1", "settings are SECTION.KEY"),
    ],
)
def test_an_unknown_key_far_from_any_gets_no_guess(override, said):
    with pytest.raises(ConfigError) as caught:
        resolve("seed-mlp", None, [override])
    assert "did you mean" not in str(caught.value) and said in str(caught.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [("lerning_rate=1", "optim.lr"), ("steps=5", "train.steps"), ("model.hiden=5", "model.hidden")],
)
def test_close_names_are_still_suggested(override, expected):
    with pytest.raises(ConfigError, match=f"did you mean '{expected}'"):
        resolve("seed-mlp", None, [override])


@pytest.mark.parametrize("data", [[1, 2], "text", {"preset": 5}, {"train": [1]}])
def test_from_dict_takes_only_a_table_of_settings(data):
    with pytest.raises(ConfigError, match="somewhere"):
        from_dict(data, where="somewhere")


def test_an_integer_python_refuses_in_a_toml_file(tmp_path):
    path = tmp_path / "big.toml"
    path.write_text("[train]\nseed = " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="big.toml holds a value this reader refuses"):
        load_toml(path)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_count_matches_the_built_model(preset):
    from mnistlab.config import parameter_count
    from mnistlab.models.build import build_model

    config = preset_config(preset)
    model = build_model(config.model)
    assert parameter_count(config.model) == sum(p.numel() for p in model.parameters())


def test_threads_up_to_the_usable_cores_are_accepted():
    from mnistlab.config.checks import usable_cores

    assert resolve("seed-mlp", None, [f"train.threads={usable_cores()}"]).train.threads >= 1


def test_explicit_preset_and_a_file_naming_another_are_refused(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "seed-mlp"\n[train]\nsteps = 50\n')
    with pytest.raises(ConfigError, match="--preset seed-softmax and the preset 'seed-mlp'"):
        resolve("seed-softmax", path)
    assert resolve("seed-mlp", path).train.steps == 50  # the same preset twice is fine
    assert resolve(None, path).preset == "seed-mlp"
    bare = tmp_path / "bare.toml"
    bare.write_text("[train]\nsteps = 70\n")  # a file without a preset takes the flag's
    c = resolve("seed-softmax", bare)
    assert c.preset == "seed-softmax" and c.model.name == "softmax" and c.train.steps == 70


def test_a_linear_schedule_needs_steps_after_its_warmup():
    with pytest.raises(ConfigError, match="leaves no steps for the linear schedule"):
        resolve("speedrun", None, ["optim.warmup_steps=5000"])
    assert resolve("seed-mlp", None, ["optim.warmup_steps=40000"]).optim.warmup_steps == 40000


@pytest.mark.parametrize("mode", ["data", "async", "tensor", "pipeline"])
def test_batch_norm_models_train_in_one_process(mode):
    with pytest.raises(ConfigError, match=f"batch statistics .* without --parallel {mode}"):
        resolve("speedrun", None, [f"parallel.mode={mode}", "parallel.workers=2"])


@pytest.mark.parametrize("preset", list(PRESETS))
def test_layer_outputs_match_the_built_model(preset):
    """What the memory check counts per image is what the model makes: every layer's output
    (views such as flatten make none), then the loss's log-softmax."""
    import torch

    from mnistlab.config.model_rules import layer_outputs
    from mnistlab.models.build import build_model

    config = preset_config(preset)
    model = build_model(config.model)
    seen: list[int] = []
    for module in model.modules():
        if not list(module.children()) and not isinstance(
            module, (torch.nn.Flatten, torch.nn.Unflatten)
        ):
            module.register_forward_hook(lambda m, i, out: seen.append(out[0].numel()))
    model.train()
    model(torch.zeros(2, 784))
    assert layer_outputs(config.model) == [*seen, 10]
