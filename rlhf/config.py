"""Typed run configuration, composed by Hydra from `configs/` and checked before anything heavy.

Defaults live only in the YAML; these dataclasses give every key a type and no default, so a
key missing from the YAML, an unknown key, or a wrongly typed value is an error at start-up,
named with its full dotted path (and, for typos, the nearest valid keys).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CONFIG_GROUPS = ("algo",)


class ConfigError(ValueError):
    """A bad configuration, caught before Ray or any model starts."""


@dataclass
class ModelConfig:
    path: Optional[str]
    trust_remote_code: bool
    cache_dir: str
    arch: dict


@dataclass
class TaskConfig:
    name: str
    max_operand: int
    ops: str
    num_eval: int
    demo_carry_error: float


@dataclass
class DataConfig:
    train_files: list[str]
    eval_files: list[str]
    prompt_key: str
    answer_key: Optional[str]
    response_key: Optional[str]
    messages_key: Optional[str]
    extra_keys: list[str]
    system_prompt: Optional[str]
    chat_template: bool
    max_prompt_tokens: Optional[int]


@dataclass
class EngineGroupConfig:
    """What every trainer group (actor, reference, critic) is: an engine over some ranks."""

    engine: str
    world_size: int
    tp_size: int
    ep_size: int
    num_cpus_per_worker: float
    num_gpus_per_worker: float
    resources: Optional[dict]
    dtype: str
    micro_batch_size: int
    packing: bool
    max_tokens_per_micro_batch: Optional[int]

    @property
    def dp_size(self) -> int:
        return self.world_size // self.tp_size


@dataclass
class LoraSection:
    rank: int
    alpha: float
    target_modules: list[str]
    recompute: bool


@dataclass
class ActorConfig(EngineGroupConfig):
    max_grad_norm: float
    weight_decay: float
    betas: list[float]
    lora: LoraSection


@dataclass
class RolloutConfig:
    engine: str
    num_engines: int
    dtype: str
    tensor_parallel_size: int
    max_model_len: int
    kv_cache_bytes: int
    gpu_memory_utilization: float
    enforce_eager: Optional[bool]
    max_num_seqs: Optional[int]
    max_num_batched_tokens: Optional[int]
    num_cpus: float
    num_gpus: float
    resources: Optional[dict]
    weight_transport: str
    placement: str
    seed_per_prompt: bool
    bucket_bytes: int
    sleep: bool
    generate_timeout_s: Optional[float]
    max_restarts: int


@dataclass
class SFTConfig:
    steps: int
    epochs: Optional[float]
    batch_size: int
    lr: float
    warmup_steps: int
    lr_schedule: str
    eval_fraction: float
    eval_every: int

    def steps_for(self, rows: int) -> int:
        """Steps of an SFT stage over `rows` training rows: `epochs` full passes when set (the
        last batch of a pass that does not divide evenly runs into the next pass), else `steps`."""
        if self.epochs is None:
            return self.steps
        return math.ceil(self.epochs * rows / self.batch_size)


@dataclass
class RLConfig:
    steps: int
    prompts_per_step: int
    n: int
    temperature: float
    top_p: float
    top_k: int
    stop: list[str]
    max_new_tokens: int
    lr: float
    warmup_steps: int
    lr_schedule: str
    off_policy_steps: int


@dataclass
class AlgoConfig:
    name: str
    adv_estimator: str
    norm_by_std: bool
    gamma: float
    lam: float
    policy_loss: str
    clip_low: float
    clip_high: float
    dual_clip: Optional[float]
    loss_agg: str
    kl_coef: float
    kl_estimator: str
    kl_mode: str
    kl_target: Optional[float]
    kl_horizon: int
    entropy_coef: float
    epochs: int
    mini_batches: int
    value_clip: Optional[float]
    dynamic_sampling: bool
    max_sampling_rounds: int
    overlong_buffer: int
    overlong_filter: bool
    critic_pretrain_steps: int
    log_ratio_clamp: Optional[float]
    seq_log_ratio_clamp: Optional[float]
    kl_clamp: Optional[float]
    rollout_correction: Optional[str]
    tis_cap: float
    mis_low: float
    mis_high: float

    @property
    def uses_critic(self) -> bool:
        return self.adv_estimator == "gae"

    @property
    def uses_reference(self) -> bool:
        return self.kl_coef > 0 or self.kl_target is not None


@dataclass
class RefConfig(EngineGroupConfig):
    pass


@dataclass
class CriticConfig(EngineGroupConfig):
    lr: float
    warmup_steps: int
    lr_schedule: str


@dataclass
class RewardFnConfig:
    name: str
    weight: float
    kwargs: dict


@dataclass
class RewardConfig:
    fn: Optional[str]
    fns: list[RewardFnConfig]
    fallback: float
    on_error: str
    timeout_s: float
    num_workers: int
    max_error_rate: float

    def specs(self):
        from rewards.manager import RewardSpec

        if self.fns:
            return [RewardSpec(f.name, f.weight, dict(f.kwargs)) for f in self.fns]
        return [RewardSpec(self.fn)]


@dataclass
class EvalConfig:
    max_new_tokens: int
    every: int
    pass_k: int
    pass_temperature: float


@dataclass
class TrainerConfig:
    output_dir: str
    ray_address: Optional[str]
    num_cpus: Optional[int]
    log_every: int
    loggers: list[str]
    save_every: int
    keep_last: int
    resume: Optional[str]
    max_consecutive_skips: int
    rollout_dump_every: int


@dataclass
class RunConfig:
    seed: int
    model: ModelConfig
    data: DataConfig
    task: TaskConfig
    actor: ActorConfig
    rollout: RolloutConfig
    sft: SFTConfig
    rl: RLConfig
    algo: AlgoConfig
    ref: RefConfig
    critic: CriticConfig
    reward: RewardConfig
    eval: EvalConfig
    trainer: TrainerConfig
    stages: list[str]
    stage_overrides: dict

    def prompt_limit(self) -> int:
        """Longest prompt, in tokens, kept for this run (data.max_prompt_tokens, or what leaves
        room for the longest generation in rollout.max_model_len)."""
        if self.data.max_prompt_tokens is not None:
            return self.data.max_prompt_tokens
        return self.rollout.max_model_len - max(self.rl.max_new_tokens, self.eval.max_new_tokens)


_SCALARS = {
    dict: ((dict,), "a mapping"),
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path)
    if dataclasses.is_dataclass(tp):
        return _to_dataclass(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp in _SCALARS:
        accepted, what = _SCALARS[tp]
        if not isinstance(value, accepted) or (tp is not bool and isinstance(value, bool)):
            raise ConfigError(f"{path} must be {what}, got {value!r}")
        return tp(value)
    raise TypeError(f"unsupported config type {tp} at {path}")


def _to_dataclass(cls: type, data: Any, path: str) -> Any:
    where = path or "the config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in hints:
            full = f"{path}.{key}" if path else key
            near = difflib.get_close_matches(key, names, n=3)
            hint = f"; did you mean {', '.join((path + '.' if path else '') + n for n in near)}?" if near else ""
            raise ConfigError(f"unknown config key {full!r}{hint} (valid keys under {where}: {', '.join(names)})")
    missing = [n for n in names if n not in data]
    if missing:
        raise ConfigError(f"{where} is missing {', '.join(missing)}")
    return cls(**{n: _convert(hints[n], data[n], f"{path}.{n}" if path else n) for n in names})


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested dict as one level of dotted keys ({"rl": {"lr": 1}} -> {"rl.lr": 1}), for config diffs and trackers."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        out.append(key)
        out.extend(_flat_keys(v, key + "."))
    return out


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="config", overrides=overrides)


def _set_stage_override(data: dict, item: str, key: str) -> None:
    """`stage_overrides={rl2: {...}}` replaces the mapping; `stage_overrides.rl2.rl.steps=3` sets one
    value in it (values parsed as Hydra parses any override)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_overrides([item])[0].value()
    except Exception as e:
        raise ConfigError(f"could not parse override {item!r}: {e}") from e
    path = key.split(".")[1:]
    if not path:
        if not isinstance(value, dict):
            raise ConfigError(f"stage_overrides must be a mapping of stage name to settings, got {value!r}")
        data["stage_overrides"] = value
        return
    node = data["stage_overrides"]
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def load_config(overrides: list[str]) -> RunConfig:
    """Compose `configs/` with command-line overrides and check the result.

    Every override is checked against the composed defaults first, so a misspelled key fails
    here, naming the nearest valid keys, rather than deep inside a run.
    """
    from omegaconf import OmegaConf

    groups = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml")) for g in CONFIG_GROUPS}
    group_overrides, value_overrides, per_stage = [], [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if key == "stage_overrides" or key.startswith("stage_overrides."):
            per_stage.append((item, key))  # free-form by stage name: checked against the schema per stage
            continue
        if key.startswith(("+", "~")):
            raise ConfigError(
                f"override {item!r}: adding or deleting keys is not supported; every key is in configs/ "
                f"(see `python -m rlhf.main --cfg`)"
            )
        if key in groups:
            if value not in groups[key]:
                near = difflib.get_close_matches(value, groups[key], n=3)
                hint = f" Did you mean {', '.join(near)}?" if near else ""
                raise ConfigError(f"{key}={value!r} is not one of {', '.join(groups[key])}.{hint}")
            group_overrides.append(item)
        else:
            value_overrides.append((item, key))
    base = OmegaConf.to_container(_compose(group_overrides), resolve=False)
    valid = _flat_keys(base)
    for item, key in value_overrides:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(f"unknown config key {key!r} in override {item!r}.{hint}")
    try:
        composed = _compose(group_overrides + [item for item, _ in value_overrides])
        data = OmegaConf.to_container(composed, resolve=True)
    except Exception as e:  # Hydra/OmegaConf parse and interpolation errors
        raise ConfigError(f"could not compose the config: {e}") from e
    for item, key in per_stage:
        _set_stage_override(data, item, key)
    cfg = _to_dataclass(RunConfig, data, "")
    validate(cfg)
    from rlhf.stages import plan

    plan(cfg)  # every stage's config, overrides merged, passes the same checks
    return cfg


def _choice(path: str, value: str, options: typing.Iterable[str]) -> None:
    options = list(options)
    if value not in options:
        near = difflib.get_close_matches(value, options, n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(f"{path}={value!r} is not one of {', '.join(options)}.{hint}")


def trainer_groups(cfg: RunConfig) -> dict[str, EngineGroupConfig]:
    """The trainer groups this run starts."""
    groups = {"actor": cfg.actor}
    if cfg.algo.uses_reference and not cfg.actor.lora.rank:  # with LoRA the actor's adapters-off weights serve
        groups["ref"] = cfg.ref
    if cfg.algo.uses_critic:
        groups["critic"] = cfg.critic
    return groups


def _check_lora(cfg: RunConfig) -> None:
    lora, a = cfg.actor.lora, cfg.actor
    if lora.rank < 0:
        raise ConfigError(f"actor.lora.rank must be 0 (off: every weight trains) or more, got {lora.rank}")
    if lora.rank == 0:
        return
    if a.engine != "automodel":
        raise ConfigError(f"actor.lora.rank={lora.rank}: LoRA is NeMo Automodel's, on actor.engine=automodel (got "
                          f"{a.engine}); set actor.engine=automodel or actor.lora.rank=0")
    if lora.alpha <= 0 or not lora.target_modules or any(not t for t in lora.target_modules):
        raise ConfigError(f"actor.lora needs alpha > 0 and non-empty target_modules patterns (e.g. ['*_proj']), got "
                          f"alpha={lora.alpha} and target_modules={lora.target_modules}")
    if a.tp_size > 1 or a.ep_size > 1:
        raise ConfigError(f"actor.lora with actor.tp_size={a.tp_size} and actor.ep_size={a.ep_size}: LoRA runs with "
                          f"data parallelism only (FSDP2) so far; set both to 1 or actor.lora.rank=0")
    if cfg.model.path is None and "sft" in cfg.stages:
        raise ConfigError(
            f"actor.lora.rank={lora.rank} with the embedded model (model.path=null): its weights are random and LoRA "
            f"keeps them frozen, so SFT cannot teach it the task. Fine-tune it fully first (actor.lora.rank=0), then "
            f"run LoRA from that run's checkpoint: model.path=<output_dir>/checkpoints/sft stages=[rl]")


def _check_layout(cfg: RunConfig) -> None:
    """Engines, parallel sizes and GPUs of every trainer group, before any process starts."""
    from engines import ENGINES

    r = cfg.rollout
    _choice("rollout.weight_transport", r.weight_transport, ["auto", "cuda_ipc", "nccl", "object_store"])
    _choice("rollout.placement", r.placement, ["colocated", "disaggregated"])
    _check_resources("rollout.resources", r.resources)
    if r.num_engines < 1:
        raise ConfigError(f"rollout.num_engines must be at least 1, got {r.num_engines}")
    if cfg.rl.off_policy_steps not in (0, 1):
        raise ConfigError(f"rl.off_policy_steps must be 0 (on-policy) or 1 (the next step's generation overlaps this "
                          f"step's training), got {cfg.rl.off_policy_steps}")
    if cfg.rl.off_policy_steps and r.sleep:
        raise ConfigError("rl.off_policy_steps=1 generates while the trainers work, but rollout.sleep=true puts vLLM to "
                          "sleep while they do; set rollout.sleep=false (or rl.off_policy_steps=0)")
    if r.sleep and (r.num_gpus == 0 or cfg.actor.num_gpus_per_worker == 0):
        raise ConfigError("rollout.sleep=true needs the engines and the actor on GPUs (rollout.num_gpus > 0 and "
                          "actor.num_gpus_per_worker > 0): otherwise nothing is freed by sleeping; set rollout.sleep=false")
    if r.sleep and r.placement == "disaggregated":
        raise ConfigError("rollout.sleep=true frees vLLM's GPU memory for trainers on the same GPUs, but with "
                          "rollout.placement=disaggregated none share them; set rollout.sleep=false")
    if r.weight_transport == "cuda_ipc" and r.num_gpus == 0:
        raise ConfigError("rollout.weight_transport=cuda_ipc needs the engines on GPUs (rollout.num_gpus > 0)")
    if r.weight_transport == "cuda_ipc" and r.placement == "disaggregated":
        raise ConfigError(
            "rollout.weight_transport=cuda_ipc cannot reach engines on GPUs of their own (rollout.placement="
            "disaggregated): use rollout.weight_transport=nccl (or auto), or rollout.placement=colocated"
        )
    if r.weight_transport == "nccl" and (r.num_gpus == 0 or cfg.actor.num_gpus_per_worker == 0
                                         or r.placement != "disaggregated"):
        raise ConfigError(
            f"rollout.weight_transport=nccl broadcasts from the trainer's GPU to the engines' GPUs: it needs "
            f"actor.num_gpus_per_worker > 0, rollout.num_gpus > 0 and rollout.placement=disaggregated (NCCL "
            f"cannot connect two processes on one GPU), got {cfg.actor.num_gpus_per_worker:g}, {r.num_gpus:g} and "
            f"{r.placement}; for engines on the trainer's GPUs use cuda_ipc (or auto)"
        )
    if r.num_gpus > 1:
        raise ConfigError(
            f"rollout.num_gpus={r.num_gpus:g}: it is the share of one GPU each vLLM worker takes (at most 1); for "
            f"more GPUs per engine raise rollout.tensor_parallel_size, for more engines rollout.num_engines"
        )
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if getattr(r, key) is not None and getattr(r, key) < 1:
            raise ConfigError(f"rollout.{key} must be at least 1 (or null for vLLM's default), got {getattr(r, key)}")
    if r.num_gpus == 0 and r.max_num_batched_tokens is not None and r.max_num_batched_tokens < r.max_model_len:
        raise ConfigError(
            f"rollout.max_num_batched_tokens={r.max_num_batched_tokens} is below rollout.max_model_len="
            f"{r.max_model_len}: on CPU every prompt is prefilled in one vLLM step (docs/known-issues.md), so the "
            f"token budget must hold the longest sequence; raise rollout.max_num_batched_tokens (or leave it null)"
        )
    if not 0 < cfg.rl.top_p <= 1 or cfg.rl.top_k < 0:
        raise ConfigError(f"rl.top_p must be in (0, 1] and rl.top_k >= 0 (0: off), got {cfg.rl.top_p} and {cfg.rl.top_k}")
    if any(not s for s in cfg.rl.stop):
        raise ConfigError(f"rl.stop={cfg.rl.stop!r} holds an empty string, which would end every response at once; remove it")
    for name, g in trainer_groups(cfg).items():
        _choice(f"{name}.engine", g.engine, ENGINES)
        if g.engine == "fsdp" and g.ep_size > 1:
            raise ConfigError(
                f"{name}.ep_size={g.ep_size}: the plain FSDP2 engine has no expert parallelism; use "
                f"{name}.engine=automodel (or {name}.ep_size=1)"
            )
        _choice(f"{name}.dtype", g.dtype, ["float32", "bfloat16", "float16"])
        for key in ("world_size", "tp_size", "ep_size", "micro_batch_size"):
            if getattr(g, key) < 1:
                raise ConfigError(f"{name}.{key} must be at least 1, got {getattr(g, key)}")
        if g.max_tokens_per_micro_batch is not None and g.max_tokens_per_micro_batch < 1:
            raise ConfigError(f"{name}.max_tokens_per_micro_batch must be at least 1 (or null: micro_batch_size rows "
                              f"per micro-batch), got {g.max_tokens_per_micro_batch}")
        if g.world_size % g.tp_size:
            raise ConfigError(
                f"{name}.world_size={g.world_size} is not divisible by {name}.tp_size={g.tp_size}: the ranks form "
                f"world_size / tp_size data-parallel groups of tp_size ranks each; make world_size a multiple of tp_size"
            )
        if g.world_size % g.ep_size:
            raise ConfigError(
                f"{name}.world_size={g.world_size} is not divisible by {name}.ep_size={g.ep_size}: experts are split "
                f"over ep_size ranks of the world; make world_size a multiple of ep_size"
            )
        _check_resources(f"{name}.resources", g.resources)
        if g.num_cpus_per_worker < 0 or g.num_gpus_per_worker < 0:
            raise ConfigError(f"{name}.num_cpus_per_worker and {name}.num_gpus_per_worker must be 0 or more")
        if g.num_gpus_per_worker > 1:
            raise ConfigError(
                f"{name}.num_gpus_per_worker={g.num_gpus_per_worker}: each rank drives one GPU (or a share of one); "
                f"use at most 1 and raise {name}.world_size instead"
            )
    _check_lora(cfg)
    from rlhf.placement import gpu_layout

    layout = gpu_layout(cfg)
    where = ("rank i of each trainer group and rollout engine i share it" if r.placement == "colocated" else
             "rank i of each trainer group shares it (rollout engines take the GPUs after the trainer's)")
    crowded = {i: s for i, s in layout.shares.items() if s > 1 + 1e-9}
    if crowded:
        i, s = next(iter(crowded.items()))
        raise ConfigError(
            f"GPU {i} would hold {s:g} GPUs of work: {where}; lower num_gpus_per_worker / rollout.num_gpus so each "
            f"GPU's shares add up to at most 1"
        )
    ipc = r.weight_transport == "cuda_ipc" or (r.weight_transport == "auto" and r.placement == "colocated"
                                                and r.num_gpus > 0 and cfg.actor.num_gpus_per_worker > 0)
    lonely = [i for gpus in layout.rollout for i in gpus if i not in layout.trainer.get("actor", [])]
    if ipc and lonely:
        raise ConfigError(
            f"GPU {lonely[0]} would hold a vLLM worker but no actor rank, so CUDA IPC (the colocated transport) "
            f"cannot reach it: {_gpu_plan(layout)}; make rollout.num_engines x rollout.tensor_parallel_size at most "
            f"actor.world_size, or set rollout.placement=disaggregated"
        )
    gpus_needed = len(layout.shares)
    if gpus_needed and cfg.trainer.ray_address is None:
        have = _gpu_count()
        if gpus_needed > have:
            raise ConfigError(
                f"rollout.placement={r.placement} needs {gpus_needed} GPUs for these roles ({_gpu_plan(layout)}) but "
                f"this machine has {have}; lower the world sizes or rollout.num_engines"
                + (", or use rollout.placement=colocated" if r.placement == "disaggregated" else "")
            )


def _gpu_count() -> int:
    """The GPUs torch sees. A machine with no NVIDIA or AMD driver has none, known without importing
    torch (over a second, most of what a bad config would take to fail); otherwise torch counts them
    (CUDA_VISIBLE_DEVICES applied)."""
    if not any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd")):
        return 0
    import torch

    return torch.cuda.device_count()


def _check_resources(path: str, resources: dict | None) -> None:
    for key, amount in (resources or {}).items():
        if key in ("CPU", "GPU", "memory") or isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
            raise ConfigError(
                f"{path} maps custom Ray resource names to positive amounts (e.g. {{rollout_node: 1}}), got "
                f"{key}: {amount!r}; CPUs and GPUs have their own keys (num_cpus..., num_gpus...)"
            )


def _gpu_plan(layout) -> str:
    parts = [f"{name} ranks on GPUs {ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else f"{name} on GPU {ranks[0]}"
             for name, ranks in layout.trainer.items()]
    gpus = [i for engine in layout.rollout for i in engine]
    if gpus:
        parts.append(f"vLLM on GPUs {gpus[0]}-{gpus[-1]}" if len(gpus) > 1 else f"vLLM on GPU {gpus[0]}")
    return ", ".join(parts)


def validate(cfg: RunConfig) -> None:
    """Cross-field checks: everything that can be known wrong before a process starts."""
    from rewards.registry import RewardResolutionError, resolve
    from rlhf.algos import AGGREGATIONS, ESTIMATORS, GROUP_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES, ROLLOUT_CORRECTIONS
    from rollout import ROLLOUT_ENGINES

    _check_layout(cfg)
    _choice("rollout.engine", cfg.rollout.engine, ROLLOUT_ENGINES)
    _choice("task.name", cfg.task.name, ["arithmetic"])
    _choice("rollout.dtype", cfg.rollout.dtype, ["float32", "bfloat16", "float16"])
    for path, value in [("sft.lr_schedule", cfg.sft.lr_schedule), ("rl.lr_schedule", cfg.rl.lr_schedule),
                        ("critic.lr_schedule", cfg.critic.lr_schedule)]:
        _choice(path, value, ["constant", "cosine", "linear"])
    positive = {
        "rollout.tensor_parallel_size": cfg.rollout.tensor_parallel_size,
        "rollout.bucket_bytes": cfg.rollout.bucket_bytes,
        "sft.batch_size": cfg.sft.batch_size,
        "rl.prompts_per_step": cfg.rl.prompts_per_step,
        "rl.n": cfg.rl.n,
        "rl.max_new_tokens": cfg.rl.max_new_tokens,
        "eval.max_new_tokens": cfg.eval.max_new_tokens,
        "algo.epochs": cfg.algo.epochs,
        "algo.mini_batches": cfg.algo.mini_batches,
        "algo.max_sampling_rounds": cfg.algo.max_sampling_rounds,
        "task.num_eval": cfg.task.num_eval,
        "trainer.log_every": cfg.trainer.log_every,
    }
    for path, value in positive.items():  # first: the checks below divide by some of these
        if value < 1:
            raise ConfigError(f"{path} must be at least 1, got {value}")

    algo = cfg.algo
    _choice("algo.kl_estimator", algo.kl_estimator, KL_ESTIMATORS)
    _choice("algo.kl_mode", algo.kl_mode, ["loss", "reward"])
    _choice("algo.adv_estimator", algo.adv_estimator, ESTIMATORS)
    _choice("algo.policy_loss", algo.policy_loss, POLICY_LOSSES)
    _choice("algo.loss_agg", algo.loss_agg, AGGREGATIONS)
    if algo.kl_mode == "reward" and algo.adv_estimator in ("grpo", "rloo") and algo.uses_reference:
        raise ConfigError(
            f"algo.kl_mode=reward needs token-level advantages (reinforce_pp, reinforce_pp_baseline or gae), "
            f"not algo.adv_estimator={algo.adv_estimator}; use algo.kl_mode=loss"
        )
    if algo.dual_clip is not None and algo.dual_clip <= 1:
        raise ConfigError(f"algo.dual_clip must be > 1 (or null), got {algo.dual_clip}")
    if algo.adv_estimator in GROUP_ESTIMATORS and cfg.rl.n < 2:
        raise ConfigError(
            f"algo.adv_estimator={algo.adv_estimator} compares the samples of each prompt, so it needs rl.n >= 2 "
            f"(with rl.n={cfg.rl.n} every advantage is 0 and nothing learns); raise rl.n, or use "
            f"algo.adv_estimator=reinforce_pp or gae (algo=reinforce_pp, algo=ppo)"
        )
    for path, value in [("algo.log_ratio_clamp", algo.log_ratio_clamp), ("algo.seq_log_ratio_clamp", algo.seq_log_ratio_clamp),
                        ("algo.kl_clamp", algo.kl_clamp)]:
        if value is not None and value <= 0:
            raise ConfigError(f"{path} must be > 0 (or null: no clamp), got {value}")
    if algo.rollout_correction is not None:
        _choice("algo.rollout_correction", algo.rollout_correction, ROLLOUT_CORRECTIONS)
    if algo.tis_cap < 1:
        raise ConfigError(f"algo.tis_cap must be >= 1 (a cap below 1 shrinks every on-policy token's weight), got {algo.tis_cap}")
    if not 0 < algo.mis_low <= 1 <= algo.mis_high:
        raise ConfigError(
            f"algo.mis_low and algo.mis_high must satisfy 0 < mis_low <= 1 <= mis_high (a sequence whose rollout and "
            f"trainer agree has ratio 1 and must be kept), got [{algo.mis_low}, {algo.mis_high}]"
        )
    if algo.overlong_buffer < 0 or algo.overlong_buffer >= cfg.rl.max_new_tokens:
        raise ConfigError(f"algo.overlong_buffer must be in [0, rl.max_new_tokens), got {algo.overlong_buffer}")
    if cfg.rl.prompts_per_step % algo.mini_batches:
        raise ConfigError(f"rl.prompts_per_step={cfg.rl.prompts_per_step} must be divisible by algo.mini_batches={algo.mini_batches}")
    for name, group in trainer_groups(cfg).items():
        if (cfg.rl.prompts_per_step // algo.mini_batches * cfg.rl.n) % group.dp_size:
            raise ConfigError(
                f"each mini-batch (rl.prompts_per_step / algo.mini_batches * rl.n = "
                f"{cfg.rl.prompts_per_step // algo.mini_batches * cfg.rl.n} samples) must divide evenly over "
                f"{name}'s {group.dp_size} data-parallel ranks ({name}.world_size / {name}.tp_size)"
            )
    for path, value in {"sft.steps": cfg.sft.steps, "rl.steps": cfg.rl.steps, "eval.every": cfg.eval.every,
                        "trainer.save_every": cfg.trainer.save_every, "trainer.keep_last": cfg.trainer.keep_last}.items():
        if value < 0:
            raise ConfigError(f"{path} must be 0 or more, got {value}")
    dp = cfg.actor.dp_size
    if cfg.sft.batch_size % dp:
        raise ConfigError(f"sft.batch_size={cfg.sft.batch_size} must be divisible by the actor's {dp} data-parallel ranks (actor.world_size / actor.tp_size)")
    if algo.critic_pretrain_steps and not algo.uses_critic:
        raise ConfigError(
            f"algo.critic_pretrain_steps={algo.critic_pretrain_steps} needs a critic (algo.adv_estimator=gae, "
            f"e.g. algo=ppo); algo.adv_estimator={algo.adv_estimator} has none"
        )
    if algo.critic_pretrain_steps < 0 or (cfg.rl.steps and algo.critic_pretrain_steps >= cfg.rl.steps):
        raise ConfigError(
            f"algo.critic_pretrain_steps must be in [0, rl.steps={cfg.rl.steps}) so the actor trains at all, "
            f"got {algo.critic_pretrain_steps}; raise rl.steps or lower algo.critic_pretrain_steps"
        )
    if cfg.algo.norm_by_std and cfg.rl.n < 2:
        raise ConfigError("algo.norm_by_std needs rl.n >= 2 samples per prompt (a group std of one sample is undefined)")
    limit = cfg.prompt_limit()
    longest = limit + max(cfg.rl.max_new_tokens, cfg.eval.max_new_tokens)
    if limit < 1 or longest > cfg.rollout.max_model_len:
        raise ConfigError(
            f"data.max_prompt_tokens={limit} plus the longest generation (rl.max_new_tokens / eval.max_new_tokens) "
            f"is {longest} tokens, over rollout.max_model_len={cfg.rollout.max_model_len}; lower data.max_prompt_tokens "
            f"or raise rollout.max_model_len"
        )
    if cfg.data.eval_files and not cfg.data.train_files:
        raise ConfigError("data.eval_files needs data.train_files (with no training files the built-in task runs, "
                          "with its own held-out problems)")
    from rlhf.data.files import check_path as check_data_path

    for key, files in (("data.train_files", cfg.data.train_files), ("data.eval_files", cfg.data.eval_files)):
        for file in files:
            problem = check_data_path(file)
            if problem:
                hint = "" if "save_to_disk" in problem else (
                    "; give .jsonl/.json, .parquet or .csv files (a glob pattern such as train-*.parquet reads every "
                    "match) or a folder written by datasets' save_to_disk")
                raise ConfigError(f"{key}: {problem}{hint}")
    if cfg.eval.pass_k < 0 or cfg.eval.pass_temperature <= 0:
        raise ConfigError(f"eval.pass_k must be 0 (off) or more and eval.pass_temperature > 0, got "
                          f"{cfg.eval.pass_k} and {cfg.eval.pass_temperature}")
    if cfg.trainer.rollout_dump_every < 0:
        raise ConfigError(f"trainer.rollout_dump_every must be 0 or more, got {cfg.trainer.rollout_dump_every}")
    if cfg.rl.temperature <= 0:
        raise ConfigError(f"rl.temperature must be > 0 for sampling, got {cfg.rl.temperature}")
    if cfg.model.path is not None:
        _check_heads(cfg, _check_model_folder(cfg.model.path, cfg.model.trust_remote_code), f"model.path={cfg.model.path}")
    else:
        _check_heads(cfg, cfg.model.arch, "the embedded model (model.arch)")
    _check_ranges(cfg)
    from rlhf.trackers import check as check_trackers

    check_trackers(cfg.trainer.loggers)
    reward = cfg.reward
    if (reward.fn is None) == (not reward.fns):
        raise ConfigError("set exactly one of reward.fn (one function) and reward.fns (several, with weights)")
    _choice("reward.on_error", reward.on_error, ["fallback", "drop_group"])
    if reward.timeout_s <= 0 or reward.num_workers < 1 or not 0 <= reward.max_error_rate <= 1:
        raise ConfigError("reward.timeout_s must be > 0, reward.num_workers >= 1, reward.max_error_rate in [0, 1]")
    for spec in reward.specs():
        try:
            resolve(spec.name)
        except RewardResolutionError as e:
            raise ConfigError(str(e)) from e
    if cfg.trainer.resume:
        from rlhf import run_state

        run_state.check(cfg)


def _check_model_folder(path: str, trust_remote_code: bool) -> dict:
    """A local HF folder with config, tokenizer and safetensors weights (nothing is unpickled);
    returns its config.json, read as JSON (importing transformers would take seconds)."""
    import json

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.path={path!r} is not a Hugging Face model folder (no config.json there); "
            f"point it at a folder written by save_pretrained, or leave it null for the embedded model"
        )
    if not any(folder.glob("*.safetensors")):
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        found = f" (found {', '.join(pickled)}: pickle files, which can run code when loaded)" if pickled else ""
        raise ConfigError(
            f"model.path={path!r} has no *.safetensors weights{found}; weights are loaded only from safetensors. "
            f"Convert them: AutoModelForCausalLM.from_pretrained(path).save_pretrained(path, safe_serialization=True)"
        )
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise ConfigError(
            f"model.path={path!r} has no tokenizer (tokenizer.json or tokenizer_config.json); save one there with "
            f"tokenizer.save_pretrained(path)"
        )
    try:
        config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"model.path={path!r}: config.json is not valid JSON ({e})") from e
    if "auto_map" in config and not trust_remote_code:
        raise ConfigError(
            f"model.path={path!r} needs Python code shipped with the model (config.json has auto_map: "
            f"{sorted(config['auto_map'])}); read that code, then set model.trust_remote_code=true to run it"
        )
    return config


def _check_heads(cfg: RunConfig, model: dict, where: str) -> None:
    """Tensor-parallel ranks hold whole attention heads: vLLM needs rollout.tensor_parallel_size to
    divide the heads and to divide the key-value heads or be a multiple of them (then they are
    replicated); the FSDP engine splits both by tp_size. Otherwise the run would fail only once
    the engines load the model. A config without head counts at the top is left to the engines."""
    heads = model.get("num_attention_heads")
    if not isinstance(heads, int):
        return
    kv = model.get("num_key_value_heads") or heads
    tp = cfg.rollout.tensor_parallel_size
    if heads % tp or (kv % tp and tp % kv):
        raise ConfigError(
            f"rollout.tensor_parallel_size={tp} does not fit {where}: it has {heads} attention heads and {kv} "
            f"key-value heads, and each vLLM tensor-parallel rank holds whole heads; use a tensor-parallel size that "
            f"divides {heads} and divides {kv} or is a multiple of it"
        )
    for name, g in trainer_groups(cfg).items():
        if g.engine == "fsdp" and (heads % g.tp_size or kv % g.tp_size):
            raise ConfigError(
                f"{name}.tp_size={g.tp_size} does not fit {where}: it has {heads} attention heads and {kv} key-value "
                f"heads, and each tensor-parallel rank holds whole heads; use a tp_size that divides both"
            )


def _check_ranges(cfg: RunConfig) -> None:
    """Values that have a type but no meaning outside a range."""
    algo, actor, rollout = cfg.algo, cfg.actor, cfg.rollout
    longest = max(cfg.rl.max_new_tokens, cfg.eval.max_new_tokens)
    checks = [
        ("sft.lr", cfg.sft.lr, cfg.sft.lr > 0, "> 0"),
        ("rl.lr", cfg.rl.lr, cfg.rl.lr > 0, "> 0"),
        ("critic.lr", cfg.critic.lr, cfg.critic.lr > 0, "> 0"),
        ("sft.warmup_steps", cfg.sft.warmup_steps, cfg.sft.warmup_steps >= 0, ">= 0"),
        ("sft.epochs", cfg.sft.epochs, cfg.sft.epochs is None or cfg.sft.epochs > 0,
         "> 0 or null (null: sft.steps sets the length; sft.steps=0 skips SFT)"),
        ("sft.eval_fraction", cfg.sft.eval_fraction, 0 <= cfg.sft.eval_fraction < 1,
         "in [0, 1) (the share of SFT rows held out for sft/eval_loss; 0: none)"),
        ("sft.eval_every", cfg.sft.eval_every, cfg.sft.eval_every >= 0, ">= 0 (0: only at the end of the stage)"),
        ("rl.warmup_steps", cfg.rl.warmup_steps, cfg.rl.warmup_steps >= 0, ">= 0"),
        ("critic.warmup_steps", cfg.critic.warmup_steps, cfg.critic.warmup_steps >= 0, ">= 0"),
        ("algo.clip_low", algo.clip_low, 0 < algo.clip_low < 1, "in (0, 1) (the ratio is clipped at 1 - clip_low)"),
        ("algo.clip_high", algo.clip_high, algo.clip_high > 0, "> 0"),
        ("algo.gamma", algo.gamma, 0 <= algo.gamma <= 1, "in [0, 1]"),
        ("algo.lam", algo.lam, 0 <= algo.lam <= 1, "in [0, 1]"),
        ("algo.kl_coef", algo.kl_coef, algo.kl_coef >= 0, ">= 0 (0: no reference model)"),
        ("algo.kl_target", algo.kl_target, algo.kl_target is None or algo.kl_target > 0, "> 0 or null"),
        ("algo.kl_horizon", algo.kl_horizon, algo.kl_horizon >= 1, ">= 1"),
        ("algo.entropy_coef", algo.entropy_coef, algo.entropy_coef >= 0, ">= 0 (a bonus for entropy)"),
        ("algo.value_clip", algo.value_clip, algo.value_clip is None or algo.value_clip > 0, "> 0 or null"),
        ("actor.max_grad_norm", actor.max_grad_norm, actor.max_grad_norm > 0, "> 0"),
        ("actor.weight_decay", actor.weight_decay, actor.weight_decay >= 0, ">= 0"),
        ("actor.betas", actor.betas, len(actor.betas) == 2 and all(0 <= b < 1 for b in actor.betas),
         "two numbers in [0, 1), e.g. [0.9, 0.999]"),
        ("rollout.num_cpus", rollout.num_cpus, rollout.num_cpus >= 0, ">= 0"),
        ("rollout.num_gpus", rollout.num_gpus, rollout.num_gpus >= 0, ">= 0"),
        ("rollout.gpu_memory_utilization", rollout.gpu_memory_utilization, 0 < rollout.gpu_memory_utilization <= 1,
         "in (0, 1]"),
        ("rollout.kv_cache_bytes", rollout.kv_cache_bytes, rollout.kv_cache_bytes > 0, "> 0"),
        ("rollout.generate_timeout_s", rollout.generate_timeout_s,
         rollout.generate_timeout_s is None or rollout.generate_timeout_s > 0, "> 0 or null (no limit)"),
        ("rollout.max_restarts", rollout.max_restarts, rollout.max_restarts >= 0, ">= 0 (0: a failed engine stops the run)"),
        ("rollout.max_model_len", rollout.max_model_len, rollout.max_model_len > longest,
         f"> {longest}, the longer of rl.max_new_tokens and eval.max_new_tokens (prompt and response must fit)"),
        ("task.max_operand", cfg.task.max_operand, cfg.task.max_operand >= 1, ">= 1"),
        ("task.ops", cfg.task.ops, bool(cfg.task.ops) and set(cfg.task.ops) <= set("+-"), 'one or both of "+-"'),
        ("task.demo_carry_error", cfg.task.demo_carry_error, 0 <= cfg.task.demo_carry_error <= 1, "in [0, 1]"),
        ("trainer.max_consecutive_skips", cfg.trainer.max_consecutive_skips, cfg.trainer.max_consecutive_skips >= 0,
         ">= 0 (0: never stop)"),
        ("trainer.num_cpus", cfg.trainer.num_cpus, cfg.trainer.num_cpus is None or cfg.trainer.num_cpus >= 1,
         ">= 1 or null"),
    ]
    for path, value, ok, want in checks:
        if not ok:
            raise ConfigError(f"{path} must be {want}, got {value!r}")
    if cfg.sft.eval_every and not cfg.sft.eval_fraction:
        raise ConfigError(f"sft.eval_every={cfg.sft.eval_every} measures the SFT eval loss on held-out rows, but "
                          f"sft.eval_fraction=0 holds out none; set sft.eval_fraction (e.g. 0.05) or sft.eval_every=0")
