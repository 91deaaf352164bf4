"""Exact resume: everything a stage (SFT or RL) needs to continue as if it had never stopped.

A state folder `<output_dir>/checkpoints/state-<stage>-step<N>/` (e.g. state-rl-step20) holds the trainer groups' sharded
weights, optimizer moments, LR schedules and RNG (one DCP folder per group, written by every
rank), `driver.json` (the step, the data position, the controller's and the reward manager's
counters, and the config the run had), with rl.off_policy_steps=1 `pending_rollouts.pt` (the next
step's samples, generated before the save) and `COMPLETE`. Rollout sampling is seeded per
generation round (see `Controller.draws`), so it needs no state of its own.

A state is written under a temporary name, renamed, and `COMPLETE` (the size of every file) is
written last, so a run killed mid-save leaves no folder that looks resumable; a folder whose
files no longer match `COMPLETE` (truncated, lost) is skipped with a warning by `resume=auto`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
from pathlib import Path

from rlhf.config import ConfigError, RunConfig, config_diff, default_config, flatten
from rlhf.config.stages import stage_names

MARKER = "COMPLETE"
PENDING = "pending_rollouts"  # the driver-state key, and file, of prefetched rollouts
_TMP = ".tmp-"
_NAME = re.compile(r"state-(.+)-step(\d+)")
# Keys that may differ between the saved run and the resumed one: where output goes and how it
# is reported, not what is computed.
_FREE = ("trainer.", "eval.")
# The trainer groups' parallel layouts: the engines reshard a saved state onto any of them
# (torch.distributed.checkpoint), and the results differ only by the order of reductions.
_LAYOUT = {f"{group}.{key}" for group in ("actor", "ref", "critic") for key in ("world_size", "tp_size")}


def _files(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file() and p.name != MARKER}


def folder_name(stage: str, step: int) -> str:
    return f"state-{stage}-step{step}"


def problem(path: Path) -> str | None:
    """Why the state folder `path` cannot be resumed from, or None if it is complete and intact."""
    marker = path / MARKER
    if not marker.is_file():
        return f"no {MARKER} marker (the save did not finish)"
    try:
        expected = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"its {MARKER} marker is unreadable ({e})"
    found = _files(path)
    for fname, size in expected.items():
        if fname not in found:
            return f"{fname} is missing"
        if found[fname] != size:
            return f"{fname} has {found[fname]} bytes, {size} were written (truncated or overwritten)"
    try:
        json.loads((path / "driver.json").read_text())
    except ValueError as e:
        return f"driver.json is unreadable ({e})"
    return None


def states(out: Path, order: list[str]) -> list[tuple[int, int, Path]]:
    """The state folders under `<out>/checkpoints` as (stage position, step, path), oldest first
    (complete or not; temporaries and stages not in `order`, the plan's stage names, left out)."""
    found = []
    for p in (out / "checkpoints").glob("state-*-step*"):
        m = _NAME.fullmatch(p.name)
        if m and p.is_dir() and m.group(1) in order:
            found.append((order.index(m.group(1)), int(m.group(2)), p))
    return sorted(found)


def latest(out: Path, order: list[str], warn=print) -> Path | None:
    """The newest intact state under `<out>/checkpoints` (later stage first, then higher step);
    broken ones are named in a warning and skipped."""
    for _, _, path in reversed(states(out, order)):
        why = problem(path)
        if why is None:
            return path
        warn(f"[rlhf] warning: skipping {path}: {why}")
    return None


def _grows(key: str, saved: dict, now: dict) -> bool:
    """`rl.steps` may grow on resume when no LR schedule depends on the total."""
    return (key == "rl.steps" and now[key] >= saved[key] and now["rl.lr_schedule"] == "constant"
            and (now["critic.lr_schedule"] == "constant" or now["algo.adv_estimator"] != "gae"))


def _relayout(key: str, saved: dict, now: dict) -> bool:
    """A layout key that a resume may change: a trainer group's world or tensor-parallel size, and
    the number of vLLM engines where each prompt's samples are seeded on their own (then the
    samples do not depend on which engine drew them)."""
    return key in _LAYOUT or (key == "rollout.num_engines" and bool(saved.get("rollout.seed_per_prompt"))
                              and bool(now.get("rollout.seed_per_prompt")))


def check(cfg: RunConfig) -> dict | None:
    """Find and check the state `trainer.resume` names, before any process starts; None: start afresh.

    `trainer.resume=auto` takes the newest intact state under `trainer.output_dir` over all
    stages (none: a fresh start). Reads only: the run calls `rewind_metrics` when it starts.
    """
    if cfg.trainer.resume is None:
        return None
    out = Path(cfg.trainer.output_dir)
    if cfg.trainer.resume == "auto":
        path = latest(out, stage_names(cfg), warn=lambda m: print(m, file=sys.stderr, flush=True))
        if path is None:
            print(f"[rlhf] trainer.resume=auto: no complete state under {out / 'checkpoints'}; starting from the beginning",
                  flush=True)
            return None
    else:
        path = Path(cfg.trainer.resume)
        if not (path / "driver.json").is_file():
            raise ConfigError(
                f"trainer.resume={cfg.trainer.resume!r} is not a resumable state (no driver.json there); point it at "
                f"a state-<stage>-step<N> folder under a run's checkpoints/ (written when trainer.save_every > 0), "
                f"or use trainer.resume=auto"
            )
    state = json.loads((path / "driver.json").read_text())
    saved, now = flatten(state["config"]), flatten(dataclasses.asdict(cfg))
    free = [k for k in set(saved) | set(now) if k.startswith(_FREE) or _relayout(k, saved, now)
            or (k in saved and k in now and _grows(k, saved, now))]
    diffs = config_diff({k: v for k, v in saved.items() if k not in free}, {k: v for k, v in now.items() if k not in free},
                        lambda key: flatten(dataclasses.asdict(default_config())).get(key))
    if diffs:
        raise ConfigError(
            f"the state {path} was saved with a different config; resume with the same overrides (only trainer.*, "
            f"eval.*, the world_size and tp_size of actor, ref and critic, and rollout.num_engines with "
            f"rollout.seed_per_prompt=true may change, and rl.steps may grow with constant LR schedules). "
            f"Differences:\n  "
            + "\n  ".join(diffs)
        )
    why = problem(path)
    if why is not None:
        raise ConfigError(f"trainer.resume={cfg.trainer.resume!r} is not a complete state: {why}")
    if not Path(state["start_path"], "config.json").is_file():
        raise ConfigError(
            f"the state {path} needs the stage's starting checkpoint {state['start_path']} "
            f"(the reference policy and the rollout's first weights), which is gone"
        )
    state["path"] = str(path)
    return state


def rewind_metrics(out: Path, stage: str, step: int, later: list[str]) -> None:
    """Drop the rows of `<out>/metrics.jsonl` from after step `step` of stage `stage` and those of
    the `later` stages (steps a stopped run did not save), so the resumed run's file reads as one
    run; earlier stages' rows and that step's own row stay."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by the kill
            continue
        if row["stage"] in later:
            continue
        if row["stage"] != stage or row["step"] < step or (row["step"] == step and ("reward/mean" in row or "sft/loss" in row)):
            keep.append(line)
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)
        print(f"[rlhf] {path}: dropped {len(lines) - len(keep)} rows from after {stage} step {step}", flush=True)


def save(out: Path, stage: str, step: int, cfg: RunConfig, groups: dict, driver: dict) -> Path:
    """Write a state folder for the end of step `step` of stage `stage` (SFT or RL); `groups` maps a name to
    a TrainerGroup.

    Written under a temporary name and renamed, then marked complete; the oldest states beyond
    `trainer.keep_last` (over all stages) are removed afterwards.
    """
    ckpt = out / "checkpoints"
    path, tmp = ckpt / folder_name(stage, step), ckpt / f"{_TMP}{folder_name(stage, step)}"
    for stale in ckpt.glob(f"{_TMP}state-*"):  # left by a run killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    if path.exists():  # e.g. a broken state of the same step from before a resume
        shutil.rmtree(path)
    tmp.mkdir(parents=True)
    for name, group in groups.items():
        group.all("save_state", str(tmp / name))
    driver = dict(driver)
    pending = driver.pop(PENDING, None)
    if pending is not None:
        import torch  # here, not at the top: config validation imports this module and must stay light

        torch.save(pending, tmp / f"{PENDING}.pt")
    state = {"step": step, "config": dataclasses.asdict(cfg), "groups": sorted(groups), **driver}
    (tmp / "driver.json").write_text(json.dumps(state, indent=2))
    _fsync_tree(tmp)
    tmp.rename(path)
    marker = path / f"{MARKER}.tmp"
    marker.write_text(json.dumps({"stage": stage, "step": step, "files": _files(path)}, indent=1))
    _fsync(marker)
    marker.rename(path / MARKER)
    if cfg.trainer.keep_last:
        for _, _, old in states(out, stage_names(cfg))[: -cfg.trainer.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            _fsync(p)


def load_pending(state: dict) -> dict | None:
    """The prefetched rollouts saved with `state`, if any (see `Controller.pending_state`)."""
    import torch

    path = Path(state["path"]) / f"{PENDING}.pt"
    return torch.load(path, weights_only=True) if path.is_file() else None


def restore(state: dict, groups: dict) -> None:
    """Load every trainer group's shards (after their optimizers are configured)."""
    for name, group in groups.items():
        group.all("load_state", str(Path(state["path"]) / name))
