"""Configuration: typed dataclasses (`schema`), the authors' configurations (`presets`), dataset files
(`dataset_file`)."""

from .presets import PRESETS, get_preset, resolve_config
from .schema import (
    ClassesConfig,
    Config,
    ConfigError,
    DataConfig,
    HeadConfig,
    ImageEncoderConfig,
    ModelConfig,
    TestConfig,
    TextEncoderConfig,
    TrainConfig,
    apply_overrides,
    flatten,
    gaussian_stage_weights,
    merge,
    parse_override,
    save_yaml,
    to_dict,
    validate,
)

__all__ = [
    "PRESETS",
    "ClassesConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "HeadConfig",
    "ImageEncoderConfig",
    "ModelConfig",
    "TestConfig",
    "TextEncoderConfig",
    "TrainConfig",
    "apply_overrides",
    "flatten",
    "gaussian_stage_weights",
    "get_preset",
    "merge",
    "parse_override",
    "resolve_config",
    "save_yaml",
    "to_dict",
    "validate",
]
