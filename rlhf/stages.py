"""The stage sequence: `stages` (e.g. [sft, rl, rl]) with `stage_overrides` merged into each
stage's own copy of the config, checked by the same schema and rules as the whole config.

A stage's name is its kind, numbered from the second of a kind on (sft, rl, rl2): the name of
its checkpoint folder, its metric rows and its key in `stage_overrides`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from rlhf.config import ConfigError, RunConfig

KINDS = ("sft", "rl")
# What a stage may change: what it trains on, how, and how it is judged. The roles' processes,
# the model and where output goes are the run's.
OVERRIDABLE = ("sft", "rl", "algo", "critic", "reward", "data", "eval")
DONE = "stage.json"  # written last into a stage's checkpoint folder: the stage is finished


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
            raise ConfigError(f"stages[{i}]={kind!r} is not one of {', '.join(KINDS)}")
        counts[kind] = counts.get(kind, 0) + 1
        names.append(kind if counts[kind] == 1 else f"{kind}{counts[kind]}")
    return names


def plan(cfg: RunConfig) -> list[Stage]:
    from rlhf.config import _to_dataclass, validate

    names = stage_names(cfg)
    unknown = sorted(set(cfg.stage_overrides) - set(names))
    if unknown:
        raise ConfigError(f"stage_overrides names {', '.join(unknown)}, not a stage of this run ({', '.join(names)})")
    base = dataclasses.asdict(cfg)
    stages = []
    for i, (name, kind) in enumerate(zip(names, cfg.stages)):
        over = cfg.stage_overrides.get(name) or {}
        if not isinstance(over, dict) or any(k not in OVERRIDABLE for k in over):
            bad = sorted(set(over) - set(OVERRIDABLE)) if isinstance(over, dict) else over
            raise ConfigError(f"stage_overrides.{name}: only the sections {', '.join(OVERRIDABLE)} can be set "
                              f"per stage, got {bad}")
        merged = _merge(copy.deepcopy(base), over)
        try:
            stage_cfg = _to_dataclass(RunConfig, merged, "")
            validate(stage_cfg)
        except ConfigError as e:
            raise ConfigError(f"stage_overrides.{name}: {e}") from e
        stages.append(Stage(name, kind, i, stage_cfg))
    return stages


# Sections that cannot change what a stage of a kind produces.
_IRRELEVANT = {"sft": ("rl", "algo", "critic", "reward"), "rl": ("sft",)}


def _comparable(stage: Stage, before: list[Stage]) -> dict:
    """What determines a stage's result: its settings and those of the stages before it, but not
    where output goes or how it is reported."""
    d = dataclasses.asdict(stage.cfg)
    for k in ("trainer", "eval", "stages", "stage_overrides", *_IRRELEVANT[stage.kind]):
        d.pop(k)
    d["after"] = [_comparable(s, before[:i]) for i, s in enumerate(before)]
    return json.loads(json.dumps(d))


def finished(stage: Stage, out: Path, before: list[Stage]) -> dict | None:
    """The record of a finished stage in `out`, or None. A finished stage run with other settings
    (its own or an earlier stage's) is an error: its checkpoint is not what this config asks for."""
    marker = stage.checkpoint(out) / DONE
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    if record["config"] != _comparable(stage, before):
        raise ConfigError(
            f"{stage.checkpoint(out)} is a finished {stage.name} stage run with other settings; restart with the "
            f"same config, use a new trainer.output_dir, or delete that folder to train the stage again"
        )
    return record


def mark_finished(stage: Stage, out: Path, before: list[Stage], record: dict) -> None:
    path = stage.checkpoint(out) / DONE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stage": stage.name, "config": _comparable(stage, before), **record}, indent=2))
    tmp.replace(path)
