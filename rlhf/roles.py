"""Starting the role processes (trainer groups, the rollout engine) from the run's config.

The pipeline asks for roles by name; how many processes each gets, with which resources and
engine, is decided here, so neither the pipeline nor the controller knows about placement.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from engines import ENGINES
from engines.base import EngineConfig
from rlhf.config import RunConfig
from rlhf.worker_group import TrainerGroup
from rlhf.workers import RolloutWorker
from rollout import ROLLOUT_ENGINES
from rollout.vllm_engine import VLLMConfig


@dataclass
class Roles:
    actor: TrainerGroup
    rollout: "ray.actor.ActorHandle"
    ref: TrainerGroup | None = None
    critic: TrainerGroup | None = None


def _engine_cfg(cfg: RunConfig) -> EngineConfig:
    return EngineConfig(cfg.actor.dtype, cfg.actor.micro_batch_size, cfg.actor.max_grad_norm, cfg.seed)


def start_trainer(cfg: RunConfig, name: str, model_path: str, trainable: bool, head: str = "lm") -> TrainerGroup:
    """A trainer group for role `name` (actor, ref or critic)."""
    return TrainerGroup(cfg.actor.world_size, ENGINES[cfg.actor.engine], model_path, _engine_cfg(cfg), trainable=trainable,
                        num_cpus=cfg.actor.num_cpus_per_worker, num_gpus=cfg.actor.num_gpus_per_worker, name=name,
                        head=head)


def start_rollout(cfg: RunConfig, model_path: str) -> "ray.actor.ActorHandle":
    rollout_cfg = VLLMConfig(
        dtype=cfg.rollout.dtype,
        tensor_parallel_size=cfg.rollout.tensor_parallel_size,
        max_model_len=cfg.rollout.max_model_len,
        kv_cache_bytes=cfg.rollout.kv_cache_bytes,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        seed=cfg.seed,
    )
    cls = ray.remote(num_cpus=cfg.rollout.num_cpus, num_gpus=cfg.rollout.num_gpus)(RolloutWorker)
    return cls.remote(ROLLOUT_ENGINES[cfg.rollout.engine], model_path, rollout_cfg)


def start_roles(cfg: RunConfig, model_path: str) -> Roles:
    """The actor and the rollout engine, started together (both load `model_path`)."""
    rollout = start_rollout(cfg, model_path)
    actor = start_trainer(cfg, "actor", model_path, trainable=True)
    ray.get(rollout.__ray_ready__.remote())
    return Roles(actor=actor, rollout=rollout)
