"""Finished stages: a stage's checkpoint folder gets `stage.json` last, with the settings that decided
its result, so a restart in the same trainer.output_dir skips it when they are unchanged and refuses
it, naming each difference, when not."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlhf.config import ConfigError, config_diff, default_config, flatten
from rlhf.config.stages import Stage

DONE = "stage.json"  # written last into a stage's checkpoint folder: the stage is finished

# Which settings decide what a finished stage produced: a restart in the same trainer.output_dir
# reuses the stage when these are unchanged, and refuses it, naming each that differs, when not.
#
# RESULT_NEUTRAL: settings of speed, placement, fault handling, output and reporting. They change
# how a stage runs, but not the weights it ends with, beyond the order of float reductions: the
# parallel layout (losses are normalised globally, so a data-parallel rank count does not change
# the mean), micro-batching, token budgets and packing, the vLLM engines' count, batching limits,
# memory, CUDA graphs and tensor parallelism (with rollout.seed_per_prompt the samples do not
# depend on the engine layout), weight-push transport and bucket size, CPU/GPU shares, Ray
# resources, timeouts and restarts, activation recomputation (actor.lora.recompute), where the
# embedded model is cached, and everything under trainer.* and eval.*. An entry ending in "."
# covers a section.
_PERF = ("world_size", "tp_size", "ep_size", "num_cpus_per_worker", "num_gpus_per_worker", "resources",
         "micro_batch_size", "packing", "max_tokens_per_micro_batch")
RESULT_NEUTRAL = (
    "trainer.", "eval.", "stages", "stage_overrides.", "model.cache_dir", "actor.lora.recompute",
    *(f"{group}.{key}" for group in ("actor", "ref", "critic") for key in _PERF),
    *(f"rollout.{key}" for key in ("num_engines", "tensor_parallel_size", "kv_cache_bytes", "gpu_memory_utilization",
                                   "enforce_eager", "max_num_seqs", "max_num_batched_tokens", "num_cpus", "num_gpus",
                                   "resources", "weight_transport", "placement", "bucket_bytes", "sleep",
                                   "generate_timeout_s", "max_restarts")),
    "agent.tool_workers", "agent.max_in_flight",
)
# What a stage of a kind does not use. An SFT stage trains on its data with the sft.* settings:
# the RL sections are not used, and the rollout engine and the reward serve only its evaluation
# (of the rollout settings only rollout.max_model_len, the longest SFT example kept, counts).
_UNUSED = {"sft": ("rl.", "algo.", "ref.", "critic.", "reward.", "rollout.", "agent."), "rl": ("sft.",)}
# The longest prompt kept (RunConfig.prompt_limit) decides which rows a stage trains on. It is
# compared in place of the keys that set it (eval.max_new_tokens among them, whose other effects
# are neutral).
PROMPT_LIMIT = "prompt limit (data.max_prompt_tokens, or if null rollout.max_model_len - max(rl.max_new_tokens, eval.max_new_tokens))"
BEFORE = "stages before it"


def _counts(key: str, stage: Stage) -> bool:
    if key in ("rollout.max_model_len", "agent.env"):  # the longest SFT example; a tool task's demonstrations
        return True
    if key == "data.max_prompt_tokens" or key.startswith(_UNUSED[stage.kind]):
        return False
    if key == "data.eval_files":  # only evaluated, except that the embedded model's tokenizer learns their text
        return stage.cfg.model.path is None
    return not any(key == n or (n.endswith(".") and key.startswith(n)) for n in RESULT_NEUTRAL)


def _own(stage: Stage) -> dict:
    """The settings that decide `stage`'s result by itself, flat (see `flatten`), as stored in JSON."""
    flat = flatten(json.loads(json.dumps(dataclasses.asdict(stage.cfg))))
    return {**{k: v for k, v in flat.items() if _counts(k, stage)}, PROMPT_LIMIT: stage.cfg.prompt_limit()}


def _settings(stage: Stage, before: list[Stage]) -> dict:
    """What decides a stage's result: its own settings and those of the stages before it
    (`[name] key`), and their names."""
    out = {BEFORE: [s.name for s in before], **_own(stage)}
    for s in before:
        out.update({f"[{s.name}] {k}": v for k, v in _own(s).items()})
    return out


def _saved_settings(record: dict, stage: Stage, before: list[Stage]) -> dict:
    """A stage.json's settings in the form `_settings` gives, limited to the keys that count now
    (a record may predate a key's move to RESULT_NEUTRAL). Records written before "settings"
    existed hold the config as nested sections, with the earlier stages' under "after"."""
    if "settings" in record:
        saved = record["settings"]
    else:
        config = dict(record["config"])
        after = config.pop("after", [])
        names = [s.name for s in before] if len(after) == len(before) else [f"#{i + 1}" for i in range(len(after))]
        saved = {BEFORE: names, **flatten(config)}
        for name, earlier in zip(names, after):
            saved.update({f"[{name}] {k}": v for k, v in flatten({k: v for k, v in earlier.items() if k != "after"}).items()})
    by_name = {s.name: s for s in before}
    keep = {}
    for key, value in saved.items():
        name, _, plain = key[1:].partition("] ") if key.startswith("[") else ("", "", key)
        owner = by_name.get(name) if name else stage
        if key in (BEFORE, PROMPT_LIMIT) or (owner is not None and (plain == PROMPT_LIMIT or _counts(plain, owner))):
            keep[key] = value
    return keep


def _default(key: str):
    """A setting's value in the default config (for a key a stage record predates)."""
    plain = key[1:].partition("] ")[2] if key.startswith("[") else key
    cfg = default_config()
    return cfg.prompt_limit() if plain == PROMPT_LIMIT else flatten(dataclasses.asdict(cfg)).get(plain)


def finished(stage: Stage, out: Path, before: list[Stage]) -> dict | None:
    """The record of a finished stage in `out`, or None. A finished stage whose result-deciding
    settings (its own or an earlier stage's; see RESULT_NEUTRAL) differ from this config's is an
    error naming each difference: its checkpoint is not what this config asks for."""
    marker = stage.checkpoint(out) / DONE
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    saved, now = _saved_settings(record, stage, before), _settings(stage, before)
    if saved[BEFORE] != now[BEFORE]:  # other earlier stages: that line says it, not each of their settings
        saved = {k: v for k, v in saved.items() if not k.startswith("[")}
        now = {k: v for k, v in now.items() if not k.startswith("[")}
    diffs = config_diff(saved, now, _default)
    if diffs:
        hint, limit = "", saved.get(PROMPT_LIMIT)
        longest = max(stage.cfg.rl.max_new_tokens, stage.cfg.eval.max_new_tokens)
        if any(d.startswith(PROMPT_LIMIT) for d in diffs) and limit and limit + longest <= stage.cfg.rollout.max_model_len:
            hint = f"\n(data.max_prompt_tokens={limit} keeps the saved prompt limit)"
        raise ConfigError(
            f"{stage.checkpoint(out)} is a finished {stage.name} stage run with other settings that change its result; "
            f"restart with the saved values, use a new trainer.output_dir, or delete that folder to train the stage "
            f"again. Differences{' ([name]: an earlier stage setting)' if any(d.startswith('[') for d in diffs) else ''}:"
            f"\n  " + "\n  ".join(diffs) + hint
        )
    return record


def mark_finished(stage: Stage, out: Path, before: list[Stage], record: dict) -> None:
    path = stage.checkpoint(out) / DONE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stage": stage.name, "settings": _settings(stage, before), **record}, indent=2))
    tmp.replace(path)
