"""Exact resume: everything an RL stage needs to continue as if it had never stopped.

A state folder `<output_dir>/checkpoints/state-<stage>-step<N>/` (e.g. state-rl-step20) holds the trainer groups' sharded
weights, optimizer moments, LR schedules and RNG (one DCP folder per group, written by every
rank) and `driver.json`: the step, the data position, the controller's and the reward
manager's counters, and the config the run had. Rollout sampling is seeded per generation
round (see `Controller.draws`), so it needs no state of its own.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlhf.config import ConfigError, RunConfig

# Keys that may differ between the saved run and the resumed one: where output goes and how it
# is reported, not what is computed.
_FREE = ("trainer.", "eval.")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check(cfg: RunConfig) -> dict:
    """Read `trainer.resume` and check it fits this config; runs before any process starts."""
    path = Path(cfg.trainer.resume)
    driver = path / "driver.json"
    if not driver.is_file():
        raise ConfigError(
            f"trainer.resume={cfg.trainer.resume!r} is not a resumable state (no driver.json there); point it at "
            f"a state-<stage>-step<N> folder under a run's checkpoints/ (written when trainer.save_every > 0)"
        )
    state = json.loads(driver.read_text())
    saved, now = _flat(state["config"]), _flat(dataclasses.asdict(cfg))
    diffs = [
        f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if not k.startswith(_FREE) and saved.get(k) != now.get(k)
    ]
    if diffs:
        raise ConfigError(
            f"trainer.resume={cfg.trainer.resume!r} was saved with a different config; resume with the same "
            f"overrides (only trainer.* and eval.* may change). Differences:\n  " + "\n  ".join(diffs)
        )
    for group in state["groups"]:
        if not (path / group).is_dir():
            raise ConfigError(f"trainer.resume={cfg.trainer.resume!r} lacks its {group}/ folder; the state is incomplete")
    if not Path(state["start_path"], "config.json").is_file():
        raise ConfigError(
            f"trainer.resume={cfg.trainer.resume!r} needs the stage's starting checkpoint {state['start_path']} "
            f"(the reference policy and the rollout's first weights), which is gone"
        )
    state["path"] = str(path)
    return state


def save(out: Path, stage: str, step: int, cfg: RunConfig, groups: dict, driver: dict) -> Path:
    """Write a state folder for the end of step `step` of RL stage `stage`; `groups` maps a name to a TrainerGroup."""
    path = out / "checkpoints" / f"state-{stage}-step{step}"
    for name, group in groups.items():
        group.all("save_state", str(path / name))
    state = {"step": step, "config": dataclasses.asdict(cfg), "groups": sorted(groups), **driver}
    tmp = path / "driver.json.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path / "driver.json")  # written last: a folder with driver.json is complete
    return path


def latest(out: Path) -> Path | None:
    """The newest complete state folder of a run (one whose driver.json was written), if any."""
    states = [p for p in (Path(out) / "checkpoints").glob("state-*-step*") if (p / "driver.json").is_file()]
    return max(states, key=lambda p: (p / "driver.json").stat().st_mtime, default=None)


def restore(state: dict, groups: dict) -> None:
    """Load every trainer group's shards (after their optimizers are configured)."""
    for name, group in groups.items():
        group.all("load_state", str(Path(state["path"]) / name))
