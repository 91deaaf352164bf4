"""What a run checks before it starts, beyond its config (rlhf.config.load_config): the trackers it
names are installed, and the state it resumes from exists, is intact and fits the config. Light:
no Ray, torch or model is imported, so a bad run fails in well under 2 s."""

from __future__ import annotations

from rlhf.config import RunConfig, load_config
from rlhf.output import run_state, trackers


def check(cfg: RunConfig) -> dict | None:
    """The state to resume from (`trainer.resume`), or None for a fresh start."""
    trackers.check(cfg.trainer.loggers)
    return run_state.check(cfg)


def load_run(overrides: list[str]) -> tuple[RunConfig, dict | None]:
    """The checked config and the state to resume from: everything that can fail before a run starts."""
    cfg = load_config(overrides)
    return cfg, check(cfg)
