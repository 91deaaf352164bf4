"""The stage sequence: `stages` (e.g. [sft, rl, rl]) with `stage_overrides` merged into each
stage's own copy of the config (typed by the same schema; rlhf/config/checks.py checks each).

A stage's name is its kind, numbered from the second of a kind on (sft, rl, rl2): the name of
its checkpoint folder, its metric rows and its key in `stage_overrides`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path

from rlhf.config.load import to_dataclass
from rlhf.config.schema import ConfigError, RunConfig

KINDS = ("sft", "rl")
# What a stage may change: what it trains on, how, and how it is judged. The roles' processes,
# the model and where output goes are the run's.
OVERRIDABLE = ("sft", "rl", "algo", "critic", "reward", "data", "eval", "agent")


@dataclass
class Stage:
    name: str
    kind: str  # sft | rl
    index: int  # position in the sequence
    cfg: RunConfig  # the run's config with this stage's overrides

    @property
    def empty(self) -> bool:
        """A stage of 0 steps is no stage (an SFT stage given in epochs always has some)."""
        return self.cfg.rl.steps == 0 if self.kind == "rl" else self.cfg.sft.epochs is None and self.cfg.sft.steps == 0

    def steps_for(self, rows: int) -> int:
        """The stage's number of steps over `rows` training rows (SFT in epochs depends on them)."""
        return self.cfg.sft.steps_for(rows) if self.kind == "sft" else self.cfg.rl.steps

    def checkpoint(self, out: Path) -> Path:
        return out / "checkpoints" / self.name


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) and base[k] else v
    return out


def stage_names(cfg: RunConfig) -> list[str]:
    """The stages' names in order (sft, rl, rl2, ...)."""
    if not cfg.stages:
        raise ConfigError("stages is empty; give at least one of sft, rl (e.g. stages=[sft,rl])")
    names, counts = [], {}
    for i, kind in enumerate(cfg.stages):
        if kind not in KINDS:
            near = difflib.get_close_matches(str(kind), KINDS, n=1)
            raise ConfigError(f"stages[{i}]={kind!r} is not one of {', '.join(KINDS)}"
                              + (f". Did you mean {near[0]}?" if near else " (e.g. stages=[sft,rl])"))
        counts[kind] = counts.get(kind, 0) + 1
        names.append(kind if counts[kind] == 1 else f"{kind}{counts[kind]}")
    return names


def plan(cfg: RunConfig) -> list[Stage]:
    """Every stage with its own config, the overrides merged in (not checked: see checks.check_stages)."""
    names = stage_names(cfg)
    unknown = sorted(set(cfg.stage_overrides) - set(names))
    if unknown:
        raise ConfigError(f"stage_overrides names {', '.join(unknown)}, not a stage of this run ({', '.join(names)}): a "
                          f"stage is named by its kind, numbered from the second of a kind on (sft, rl, rl2); rename the "
                          f"entry or add the stage to stages")
    base = dataclasses.asdict(cfg)
    stages = []
    for i, (name, kind) in enumerate(zip(names, cfg.stages)):
        over = cfg.stage_overrides.get(name) or {}
        if not isinstance(over, dict) or any(k not in OVERRIDABLE for k in over):
            bad = sorted(set(over) - set(OVERRIDABLE)) if isinstance(over, dict) else over
            raise ConfigError(f"stage_overrides.{name}: only the sections {', '.join(OVERRIDABLE)} can be set "
                              f"per stage, got {bad}; set the others for the whole run (e.g. actor.world_size=1, "
                              f"not stage_overrides.{name}.actor.world_size=1)")
        try:
            stage_cfg = to_dataclass(RunConfig, _merge(copy.deepcopy(base), over), "")
        except ConfigError as e:
            raise ConfigError(f"stage_overrides.{name}: {e}") from e
        stages.append(Stage(name, kind, i, stage_cfg))
    return stages
