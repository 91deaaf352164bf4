"""The run's configuration as typed dataclasses: every key of `configs/` with its type and no
default (defaults live only in the YAML), so a key missing from the YAML, an unknown key or a
wrongly typed value is an error at start-up (rlhf/config/load.py). Imports nothing of the project.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import Any, Optional


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
    num_train: int
    demo_tool_skip: float


@dataclass
class AgentSection:
    """Multi-turn rollouts: an environment answers each assistant turn (rollout/trajectory.py)."""

    env: Optional[str]
    tool_parser: str
    max_turns: int
    tool_timeout_s: float
    max_tool_output_chars: int
    tool_workers: int
    max_in_flight: int


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
    partial_rollouts: bool


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
    decoupled_cap: float

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
    """One entry of reward.fns. The YAML cannot hold defaults for the items of a list, so the two
    optional fields keep theirs here."""
    name: str
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)


@dataclass
class RewardConfig:
    fn: Optional[str]
    fns: list[RewardFnConfig]
    fallback: float
    on_error: str
    timeout_s: float
    num_workers: int
    max_error_rate: float

    def specs(self) -> list[tuple[str, float, dict]]:
        """(name, weight, kwargs) of each reward function (rewards.manager.RewardSpec's fields)."""
        if self.fns:
            return [(f.name, f.weight, dict(f.kwargs)) for f in self.fns]
        return [(self.fn, 1.0, {})] if self.fn is not None else []


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
    agent: AgentSection
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


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested dict as one level of dotted keys ({"rl": {"lr": 1}} -> {"rl.lr": 1}), for config diffs and trackers."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_diff(saved: dict, now: dict, default: typing.Callable[[str], Any] = lambda key: None) -> list[str]:
    """`key: saved X, now Y` for each key of two flat configs (see `flatten`) whose values differ,
    in key order. A key the saved config lacks (added to the code after it was saved) is no
    difference while it holds its default, `default(key)`: it asks for what the saving code did."""
    return [f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k) and (k in saved or k not in now or now[k] != default(k))]


def trainer_groups(cfg: RunConfig) -> dict[str, EngineGroupConfig]:
    """The trainer groups this run starts."""
    groups = {"actor": cfg.actor}
    if cfg.algo.uses_reference and not cfg.actor.lora.rank:  # with LoRA the actor's adapters-off weights serve
        groups["ref"] = cfg.ref
    if cfg.algo.uses_critic:
        groups["critic"] = cfg.critic
    return groups
