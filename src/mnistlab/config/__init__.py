"""Settings: the typed config tree, presets, TOML and ``--set`` overrides. Standard library only."""

from mnistlab.config.checks import validate
from mnistlab.config.load import (
    all_keys,
    apply_overrides,
    flat_dict,
    from_dict,
    load_toml,
    preset_config,
    resolve,
    set_value,
    to_dict,
    to_toml,
)
from mnistlab.config.model_rules import parameter_count
from mnistlab.config.presets import PRESETS
from mnistlab.config.schema import (
    CheckpointConfig,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "PRESETS",
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "TrackingConfig",
    "TrainConfig",
    "all_keys",
    "apply_overrides",
    "flat_dict",
    "from_dict",
    "load_toml",
    "parameter_count",
    "preset_config",
    "resolve",
    "set_value",
    "to_dict",
    "to_toml",
    "validate",
]
