"""Starting the role processes (trainer groups, the rollout engine) from the run's config.

The pipeline asks for roles by name; how many processes each gets, with which resources and
engine, is decided here, so neither the pipeline nor the controller knows about placement.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import ray
import torch

from engines import ENGINES
from engines.base import EngineConfig, LoraConfig
from rlhf.config import RunConfig, trainer_groups
from rlhf.config.layout import gpu_layout
from rlhf.orchestration.placement import Placement
from rlhf.orchestration.starting import wait_started
from rlhf.orchestration.worker_group import TrainerGroup
from rlhf.orchestration.workers import ROLLOUT_ACTOR_OPTIONS, RolloutWorker
from rollout import ROLLOUT_ENGINES
from rollout.group import RolloutGroup
from rollout.vllm_engine import VLLMConfig
from weight_sync import choose_transport


class AdaptersOff:
    """The reference policy of a LoRA run: the actor's own weights with its adapters off, which
    is the model the stage started from, so no second copy of the model is loaded or held. It
    answers the one call the controller makes of a reference; it has no processes of its own."""

    workers: tuple = ()

    def __init__(self, actor: TrainerGroup):
        self.actor = actor

    def dp(self, method: str, batch):
        if method != "logprobs":
            raise AttributeError(f"the LoRA reference answers logprobs only, not {method!r}")
        return self.actor.dp("base_logprobs", batch)

    def shutdown(self) -> None:
        """The actor's processes are the actor's to end."""


@dataclass
class Roles:
    actor: TrainerGroup
    rollout: RolloutGroup
    placement: Placement | None = None
    ref: TrainerGroup | AdaptersOff | None = None
    critic: TrainerGroup | None = None
    model_path: str | None = None  # what the roles were started from (its config gives FLOPs per token)

    sleep: bool = False  # trainers and vLLM take turns on the GPUs (rollout.sleep)
    one_after_the_other: bool = False  # the engines started before the actor (they share its GPUs)

    def trainers(self) -> list[TrainerGroup]:
        return [g for g in (self.actor, self.ref, self.critic) if g is not None and not isinstance(g, AdaptersOff)]

    def prepare_training(self) -> None:
        """Before trainer work (after generation): with sleep, vLLM frees the GPUs and the
        trainers move back onto them."""
        if not self.sleep or self._turn == "train":
            return
        self.rollout.all("sleep")
        if self._turn == "rollout":
            for group in self.trainers():
                group.all("onload")
        self._turn = "train"

    def prepare_rollout(self) -> None:
        """Before generation: with sleep, after trainer work that pushed no weights (critic
        pre-training, an evaluation between steps), the trainers move out and vLLM wakes with the
        weights it slept with."""
        if not self.sleep or self._turn != "train":
            return
        for group in self.trainers():
            group.all("offload", "all")
        self.rollout.all("wake", ["weights", "kv_cache"])
        self._turn = "rollout"

    def sync_weights(self) -> int:
        """Push the actor's weights into every rollout engine; bytes sent. An engine that dies
        before or during the push is replaced by the rollout group, whose fresh engines get the
        weights by a push to every engine (`push`); any other failure (a trainer rank's death, a
        push the receiver refuses) propagates."""
        try:
            return self.push()
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError):
            failed = self.rollout.dead()
            if not failed:
                raise
        self.rollout.recover(failed, "during a weight push")
        return self._sent

    def push(self) -> int:
        """One push of the actor's weights into every rollout engine; bytes sent. With sleep, vLLM
        wakes its weights for the push, the trainers move to CPU, then vLLM wakes its KV cache."""
        self.prepare_training()
        if self.sleep:
            for group in self.trainers():
                group.all("offload", "optimizer")  # not needed for the push
            self.rollout.all("wake", ["weights"])
        sent, skipped = self.actor.all("sync_weights")[0]
        if self.sleep:
            for group in self.trainers():
                group.all("offload", "all")
            self.rollout.all("wake", ["kv_cache"])
            self._turn = "rollout"
        if skipped and not self._told:
            print(f"[rlhf] weight sync: {len(skipped)} trainer tensor(s) have no place in the rollout model and "
                  f"are not sent: {', '.join(skipped[:5])}", flush=True)
            self._told = True
        self._sent = sent
        return sent

    _sent = 0
    _told = False
    _turn = "both"  # who holds the GPUs: both (at start-up), train, or rollout


def plan_placement(cfg: RunConfig) -> Placement:
    """`rollout.placement` (see `rlhf.orchestration.placement`): a placement-group bundle per GPU index."""
    layout = gpu_layout(cfg)
    groups = trainer_groups(cfg)
    slots = [(i, groups[name].num_cpus_per_worker, groups[name].resources or {})
             for name, ranks in layout.trainer.items() for i in ranks]
    # an engine's own process sits on its first GPU; its tensor-parallel workers ask for no CPU
    slots += [(i, cfg.rollout.num_cpus if k == 0 else 0.0, (cfg.rollout.resources or {}) if k == 0 else {})
              for gpus in layout.rollout for k, i in enumerate(gpus)]
    return Placement(slots, layout.rollout)


def _resources(resources: dict | None) -> dict:
    """Ray actor options asking for these custom resources (`*.resources` in the config)."""
    return {"resources": dict(resources)} if resources else {}


def _lora(cfg: RunConfig) -> LoraConfig | None:
    lora = cfg.actor.lora
    return (LoraConfig(lora.rank, float(lora.alpha), tuple(lora.target_modules), lora.recompute)
            if lora.rank > 0 else None)


def start_trainer(cfg: RunConfig, name: str, model_path: str, trainable: bool, head: str = "lm",
                  placement: Placement | None = None) -> TrainerGroup:
    """The trainer group for role `name` (actor, ref or critic), laid out by its config section."""
    group = getattr(cfg, name)
    engine_cfg = EngineConfig(dtype=group.dtype, micro_batch_size=group.micro_batch_size,
                              max_grad_norm=cfg.actor.max_grad_norm, seed=cfg.seed,
                              trust_remote_code=cfg.model.trust_remote_code, tp_size=group.tp_size, ep_size=group.ep_size,
                              packing=group.packing, max_tokens_per_micro_batch=group.max_tokens_per_micro_batch,
                              lora=_lora(cfg) if name == "actor" else None)
    where = placement if placement is not None and group.num_gpus_per_worker else None
    return TrainerGroup(group.world_size, ENGINES[group.engine], model_path, engine_cfg, trainable=trainable,
                        num_cpus=group.num_cpus_per_worker, num_gpus=group.num_gpus_per_worker, name=name, head=head,
                        options=[{**(where.options(r) if where else {}), **_resources(group.resources)}
                                 for r in range(group.world_size)])


def start_rollout(cfg: RunConfig, model_path: str, transport: str, placement: Placement,
                  which: list[int] | None = None, name: str = "rollout-{}") -> list:
    """`rollout.num_engines` vLLM engines (or those numbered `which`), each a Ray actor with its own
    copy of the model."""
    r = cfg.rollout
    rollout_cfg = VLLMConfig(
        dtype=r.dtype,
        tensor_parallel_size=r.tensor_parallel_size,
        max_model_len=r.max_model_len,
        kv_cache_bytes=r.kv_cache_bytes,
        gpu_memory_utilization=r.gpu_memory_utilization,
        seed=cfg.seed,
        enforce_eager=r.enforce_eager,
        max_num_seqs=r.max_num_seqs,
        max_num_batched_tokens=r.max_num_batched_tokens,
        weight_transport=transport,
        trust_remote_code=cfg.model.trust_remote_code,
        gpu_share=r.num_gpus,
        ray_bundles=(),
        sleep=r.sleep,
        partial_rollouts=cfg.rl.partial_rollouts,
    )
    cls = ray.remote(num_cpus=r.num_cpus, num_gpus=r.num_gpus, **ROLLOUT_ACTOR_OPTIONS)(RolloutWorker)
    return [cls.options(name=name.format(i), **placement.rollout_options(i, r.num_gpus), **_resources(r.resources))
            .remote(ROLLOUT_ENGINES[r.engine], model_path,
                    dataclasses.replace(rollout_cfg, ray_bundles=placement.rollout_bundles(i)))
            for i in (which or range(r.num_engines))]


def start_roles(cfg: RunConfig, model_path: str, pad_id: int) -> Roles:
    """The actor and the rollout engines (both load `model_path`), and the weight transport
    between them. They start together, unless an engine shares a GPU with the actor: vLLM sizes
    its KV cache from the GPU memory it profiles while it starts, and stops with "Error in memory
    profiling" when another process frees memory on that GPU meanwhile, as a starting trainer does
    (seen on an H200, 2026-12-07). Then the engines start first."""
    on_gpu = cfg.rollout.num_gpus > 0 and cfg.actor.num_gpus_per_worker > 0 and torch.cuda.is_available()
    transport = choose_transport(cfg.rollout.weight_transport, on_gpu, cfg.rollout.placement)
    placement = plan_placement(cfg)
    began = time.time()
    engines = start_rollout(cfg, model_path, transport, placement)
    shared = bool(gpu_layout(cfg).shared_with_rollout("actor"))
    named = {f"rollout engine {i}": e for i, e in enumerate(engines)}
    if shared:
        wait_started(named, began)
    actor = start_trainer(cfg, "actor", model_path, trainable=True, placement=placement)
    wait_started(named, began)
    actor.all("connect_rollout", transport, engines, cfg.rollout.bucket_bytes, cfg.rollout.dtype)
    roles = Roles(actor=actor, rollout=None, placement=placement, model_path=model_path, sleep=cfg.rollout.sleep,
                  one_after_the_other=shared)
    restarted = 0

    def restart(failed: list[int], workers: list) -> None:
        """Fresh engines in the places `failed` (put into `workers`, the group's list), in the same
        placement, connected to the actor and given its current weights."""
        nonlocal restarted
        began = time.time()
        for i in failed:
            restarted += 1
            workers[i] = start_rollout(cfg, model_path, transport, placement, which=[i],
                                       name=f"rollout-{i}.{restarted}")[0]
        wait_started({f"rollout engine {i}": workers[i] for i in failed}, began)
        actor.all("connect_rollout", transport, workers, cfg.rollout.bucket_bytes, cfg.rollout.dtype)
        roles.push()  # with rollout.sleep, also puts every engine and trainer where a push leaves them

    roles.rollout = RolloutGroup(engines, pad_id, restart, cfg.rollout.generate_timeout_s, cfg.rollout.max_restarts)
    return roles
