"""The run's configuration, in three layers with no cycle: the schema (typed dataclasses, imports
nothing of the project), loading (Hydra composition and overrides into the schema) and checks
(what the values mean together; may import whatever they check). `load_config` is all three."""

from rlhf.config.checks import check_stages, validate
from rlhf.config.load import CONFIG_DIR, compose_config, default_config
from rlhf.config.schema import (
    ConfigError,
    EngineGroupConfig,
    RunConfig,
    config_diff,
    flatten,
    trainer_groups,
)


def load_config(overrides: list[str]) -> RunConfig:
    """`configs/` composed with command-line overrides, typed, and checked (the whole run and every
    stage): what the config and the files it names can reveal fails here, before anything starts."""
    cfg = compose_config(overrides)
    validate(cfg)
    check_stages(cfg)
    return cfg


__all__ = ["CONFIG_DIR", "ConfigError", "EngineGroupConfig", "RunConfig", "check_stages", "compose_config",
           "config_diff", "default_config", "flatten", "load_config", "trainer_groups", "validate"]
