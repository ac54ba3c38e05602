"""Command-line flags become settings once (``apps.flags``), before one validation."""

from __future__ import annotations

import argparse

import pytest

from mnistlab.apps import train_cmd
from mnistlab.apps.flags import FLAG_SETTINGS, flag_settings, override_keys
from mnistlab.config import all_keys, load, resolve
from mnistlab.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    return parser.parse_args(["train", *argv])


def test_every_flag_names_a_real_setting_and_a_real_flag():
    args = parse()
    assert set(FLAG_SETTINGS.values()) <= set(all_keys())
    assert all(hasattr(args, flag) for flag in FLAG_SETTINGS)
    assert flag_settings(args) == {}


def test_flags_win_over_set_and_are_validated_with_it(monkeypatch):
    args = parse("--set", "train.device=cuda", "--device", "cpu", "--keep", "5", "--workers", "2")
    assert flag_settings(args) == {
        "train.device": "cpu",
        "checkpoint.keep": 5,
        "parallel.workers": 2,
    }
    assert override_keys(args) == [
        "train.device",
        "train.device",
        "checkpoint.keep",
        "parallel.workers",
    ]
    calls = []
    real = load.validate
    monkeypatch.setattr(load, "validate", lambda c: calls.append(c) or real(c))
    config = train_cmd.config_from_args(args)
    assert (config.train.device, config.checkpoint.keep, config.parallel.workers) == ("cpu", 5, 2)
    assert len(calls) == 1  # one validation for preset, --set and flags together
    with pytest.raises(ConfigError, match="parallel.microbatches must be at least 1"):
        train_cmd.config_from_args(parse("--microbatches", "0"))


def test_resolve_takes_typed_settings_after_overrides():
    config = resolve("seed-mlp", None, ["train.steps=10"], {"train.steps": 20})
    assert config.train.steps == 20
