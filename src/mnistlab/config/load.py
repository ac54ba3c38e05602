"""Build a run's configuration: preset, then TOML file, then ``--set`` overrides, then checks.

Overrides are type-checked against the dataclass fields, and an unknown key names the nearest
valid one, so ``--set optim.learning_rate=0.2`` says "did you mean optim.lr?".
"""

from __future__ import annotations

import difflib
import math
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from mnistlab.config.checks import validate
from mnistlab.config.presets import PRESETS
from mnistlab.config.schema import SECTIONS, Config, field_types
from mnistlab.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def all_keys() -> list[str]:
    """Every ``section.key`` a person may set."""
    return [f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in fields(cls)]


# Names people bring from other tools, mapped to ours (TensorFlow's own among them).
ALIASES = {
    "learning_rate": "lr",
    "learning_rate_base": "lr",
    "learning_rate_decay": "lr_decay",
    "decay_rate": "lr_decay",
    "regularization": "l2",
    "regularization_rate": "l2",
    "weight_decay": "l2",
    "moving_average_decay": "ema_decay",
    "training_steps": "steps",
    "max_steps": "steps",
    "batch": "batch_size",
    "hidden_size": "hidden",
    "layer1_node": "hidden",
    "optimizer": "name",
}


CLOSE = 0.7
"""How alike (difflib's ratio) a name must be to a valid one to be suggested: ``trian`` ~
``train`` (0.8), ``seed_mlp`` ~ ``seed-mlp``; ``foo`` ~ ``lr`` (0.4) is no hint at all."""


def _nearest(name: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for a valid name really close to ``name``, or an empty string."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=CLOSE)
    return f"; did you mean {close[0]!r}?" if close else ""


def _key_hint(key: str, choices: list[str]) -> str:
    """What to say after "unknown setting KEY": the nearest valid ``section.key`` when one is
    really close (or is the name other tools use for it), else the keys of its section, else
    the sections."""
    section, _, tail = key.rpartition(".")
    sections = list(dict.fromkeys(c.partition(".")[0] for c in choices))
    if section and section not in sections:  # "trian.steps": a misspelt section
        near = difflib.get_close_matches(section, sections, n=1, cutoff=CLOSE)
        section = near[0] if near else section
    in_section = [c for c in choices if c.startswith(section + ".")] if section else choices
    alias = difflib.get_close_matches(tail, list(ALIASES), n=1, cutoff=0.85)  # "lerning_rate"
    if alias:
        hits = [c for c in in_section or choices if c.rpartition(".")[2] == ALIASES[alias[0]]]
        if hits:
            return f"; did you mean {hits[0]!r}?"
    if in_section:
        tails = {c.rpartition(".")[2]: c for c in in_section}
        # "l2_reg" -> "l2", "steps_total" -> "steps": a valid name the key starts with
        prefixed = sorted((t for t in tails if section and tail.startswith(t)), key=len)
        close = difflib.get_close_matches(tail, list(tails), n=1, cutoff=CLOSE)
        if prefixed or close:
            return f"; did you mean {tails[(prefixed[-1:] or close)[0]]!r}?"
    if section in sections:
        return f" ([{section}] holds {', '.join(t.rpartition('.')[2] for t in in_section)})"
    return (
        f" (settings are SECTION.KEY, with the sections {', '.join(sections)}; the README's "
        "Settings table lists every key)"
    )


def _field_type(section: str, key: str) -> Any:
    return field_types(section)[key]


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Turn ``value`` (a string from the command line, or a TOML value) into ``typ``."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        parts: list[Any]
        if isinstance(value, str):
            parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            parts = [value]
        else:
            raise ConfigError(f"{key} expects a list of integers such as 500,300; got {value!r}")
        return tuple(_coerce(p, args[0], key) for p in parts)
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{key} expects true or false; got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects an integer; got {value!r}")
        if isinstance(value, int):
            return value
        text = str(value).strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if number.is_integer():
                return int(number)
            raise ConfigError(f"{key} expects an integer; got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects a number; got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects a number; got {value!r}") from None
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} expects text; got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported setting type {typ!r}")  # pragma: no cover


def set_value(config: Config, key: str, value: Any) -> Config:
    """Return ``config`` with ``section.key`` set to ``value`` (coerced and checked)."""
    keys = all_keys()
    if key == "preset":
        raise ConfigError("choose a preset with --preset NAME, not --set preset=...")
    if "." not in key or key not in keys:
        raise ConfigError(f"unknown setting {key!r}{_key_hint(key, keys)}")
    section, name = key.split(".", 1)
    coerced = _coerce(value, _field_type(section, name), key)
    sub = replace(getattr(config, section), **{name: coerced})
    return replace(config, **{section: sub})


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``KEY=VALUE`` strings in order."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.steps=2000); got {item!r}")
        key, value = item.split("=", 1)
        config = set_value(config, key.strip(), value.strip())
    return config


def from_dict(data: dict[str, Any], base: Config | None = None, *, where: str = "config") -> Config:
    """Overlay a nested mapping (as in a TOML file or a checkpoint) onto ``base``. Anything that
    is not such a mapping of settings is a ``ConfigError`` (a checkpoint may hold anything)."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: settings must be a table of sections; got {type(data).__name__}"
        )
    preset = data.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"{where}: preset must be a name; got {preset!r:.60}")
    if base is None:
        base = preset_config(str(preset)) if preset else Config()
    elif preset is not None and preset != base.preset:
        base = preset_config(str(preset))
    config = base
    for section, values in data.items():
        if section == "preset":
            continue
        if section not in SECTIONS:
            raise ConfigError(
                f"{where}: unknown section [{section!s:.60}]{_nearest(str(section), list(SECTIONS))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of settings")
        for name, value in values.items():
            config = set_value(config, f"{section}.{name!s:.60}", value)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """The whole tree as plain values (lists for tuples), suitable for JSON and TOML."""
    out: dict[str, Any] = {"preset": config.preset}
    for section in SECTIONS:
        sub = getattr(config, section)
        out[section] = {
            f.name: list(getattr(sub, f.name))
            if isinstance(getattr(sub, f.name), tuple)
            else getattr(sub, f.name)
            for f in fields(sub)
        }
    return out


def flat_dict(config: Config) -> dict[str, Any]:
    """``{"section.key": value}`` for every setting (TensorBoard hparams, tables)."""
    flat: dict[str, Any] = {"preset": config.preset}
    for section, values in to_dict(config).items():
        if isinstance(values, dict):
            for name, value in values.items():
                flat[f"{section}.{name}"] = value
    return flat


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def to_toml(config: Config) -> str:
    """TOML text that ``load_toml`` reads back to the same config (``None`` values are omitted)."""
    lines = [f'preset = "{config.preset}"']
    for section, values in to_dict(config).items():
        if not isinstance(values, dict):
            continue
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except ValueError as exc:  # an integer of more than 4,300 digits, which Python refuses
        raise ConfigError(f"{path} holds a value this reader refuses: {exc}") from None


def load_toml(path: str | Path, base: Config | None = None) -> Config:
    path = Path(path)
    return from_dict(_read_toml(path), base, where=str(path))


def preset_config(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}{_nearest(name, list(PRESETS))} "
            f"(presets: {', '.join(PRESETS)})"
        )
    return PRESETS[name]()


def resolve(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Config:
    """Preset, then TOML file, then ``KEY=VALUE`` overrides, then ``settings`` (``{key: value}``,
    what the command line's own flags set); then ``validate``, once.

    A preset given explicitly and a different one named in the file are refused rather than one
    silently winning: the file's settings were written for its own preset.
    """
    config = preset_config(preset) if preset else None
    if config_file is not None:
        path = Path(config_file)
        data = _read_toml(path)
        named = data.get("preset")
        if preset and named is not None and named != preset:
            raise ConfigError(
                f"--preset {preset} and the preset {named!r} named in {path} disagree: drop "
                f"--preset to train {named!r} with the file's settings, or change the file's "
                f"`preset = ...` line to {preset!r}"
            )
        config = from_dict(data, config, where=str(path))
    if config is None:
        config = preset_config("seed-mlp")
    config = apply_overrides(config, list(overrides or []))
    for key, value in (settings or {}).items():
        config = set_value(config, key, value)
    return validate(config)
