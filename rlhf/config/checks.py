"""Checks: what the values of a composed config mean together, everything that can be known wrong
from the config and the files it names before a process starts. May import whatever it checks
(engines, rollout engines, reward functions, environments, data files); nothing imports it back
but the package's `load_config`.
"""

from __future__ import annotations

import difflib
import math
import typing
from pathlib import Path

from rlhf.config.schema import ConfigError, RunConfig, trainer_groups


def _choice(path: str, value: str, options: typing.Iterable[str]) -> None:
    options = list(options)
    if value not in options:
        near = difflib.get_close_matches(value, options, n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(f"{path}={value!r} is not one of {', '.join(options)}.{hint}")


def _check_lora(cfg: RunConfig) -> None:
    lora, a = cfg.actor.lora, cfg.actor
    if lora.rank < 0:
        raise ConfigError(f"actor.lora.rank must be 0 (off: every weight trains) or more, got {lora.rank}")
    if lora.rank == 0:
        return
    if a.engine != "automodel":
        raise ConfigError(f"actor.lora.rank={lora.rank}: LoRA is NeMo Automodel's, on actor.engine=automodel (got "
                          f"{a.engine}); set actor.engine=automodel or actor.lora.rank=0")
    if lora.alpha <= 0:
        raise ConfigError(f"actor.lora.alpha must be > 0 (the adapters are scaled by alpha / rank), got {lora.alpha:g}; "
                          f"e.g. actor.lora.alpha={2 * lora.rank} (twice the rank)")
    if not lora.target_modules or any(not t for t in lora.target_modules):
        raise ConfigError(f"actor.lora.target_modules must be a non-empty list of non-empty patterns, got "
                          f"{lora.target_modules!r}; e.g. actor.lora.target_modules=['*_proj'] (every attention and MLP "
                          f"projection of Qwen and Llama models)")
    for key in ("tp_size", "ep_size"):
        if getattr(a, key) > 1:
            raise ConfigError(f"actor.lora.rank={lora.rank} with actor.{key}={getattr(a, key)}: LoRA runs with data "
                              f"parallelism only (FSDP2) so far; set actor.{key}=1 or actor.lora.rank=0")
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
    k = cfg.rl.off_policy_steps
    if k < 0:
        raise ConfigError(f"rl.off_policy_steps must be 0 (on-policy) or more (batches generated ahead of training, "
                          f"each at most that many updates old), got {k}")
    if k and r.sleep:
        raise ConfigError(f"rl.off_policy_steps={k} generates while the trainers work, but rollout.sleep=true puts vLLM "
                          f"to sleep while they do; set rollout.sleep=false (or rl.off_policy_steps=0)")
    if cfg.rl.partial_rollouts and not k:
        raise ConfigError("rl.partial_rollouts=true lets new weights land in generation that is in flight, but with "
                          "rl.off_policy_steps=0 nothing generates while the trainer works; set rl.off_policy_steps "
                          "(e.g. 2) or rl.partial_rollouts=false")
    multi_turn_ahead = k >= 1 and cfg.agent.env is not None  # a push does not wait for multi-turn batches
    if (k > 1 or cfg.rl.partial_rollouts or multi_turn_ahead) and cfg.algo.dynamic_sampling:
        why = (f"rl.off_policy_steps={k}" if k > 1 else "rl.partial_rollouts=true (a push does not wait for it)"
               if cfg.rl.partial_rollouts else f"agent.env={cfg.agent.env} (a push does not wait for multi-turn batches)")
        raise ConfigError(f"algo.dynamic_sampling refills a batch with prompts drawn while it generates, which with "
                          f"several batches generating at once ({why}) would make the prompts depend on timing; use "
                          f"rl.off_policy_steps=0 (single-turn: or 1 without partial rollouts) with dynamic "
                          f"sampling, or algo.dynamic_sampling=false")
    for key, value in (("rollout.num_gpus", r.num_gpus), ("actor.num_gpus_per_worker", cfg.actor.num_gpus_per_worker)):
        if r.sleep and value == 0:
            raise ConfigError(f"rollout.sleep=true frees GPU memory, but {key}=0 puts that role on the CPU, so nothing "
                              f"would be freed; set rollout.sleep=false, or give the engines and the actor GPU shares "
                              f"(e.g. actor.num_gpus_per_worker=0.5 rollout.num_gpus=0.5)")
    if r.sleep and r.placement == "disaggregated":
        raise ConfigError("rollout.sleep=true frees vLLM's GPU memory for trainers on the same GPUs, but with "
                          "rollout.placement=disaggregated none share them; set rollout.sleep=false")
    if r.weight_transport == "cuda_ipc" and r.num_gpus == 0:
        raise ConfigError("rollout.weight_transport=cuda_ipc needs the engines on GPUs, but rollout.num_gpus=0; give "
                          "them a share of the trainer's GPUs (e.g. rollout.num_gpus=0.5 actor.num_gpus_per_worker=0.5) "
                          "or set rollout.weight_transport=auto")
    if r.weight_transport == "cuda_ipc" and r.placement == "disaggregated":
        raise ConfigError(
            "rollout.weight_transport=cuda_ipc cannot reach engines on GPUs of their own (rollout.placement="
            "disaggregated): use rollout.weight_transport=nccl (or auto), or rollout.placement=colocated"
        )
    if r.weight_transport == "nccl":
        for key, value in (("actor.num_gpus_per_worker", cfg.actor.num_gpus_per_worker), ("rollout.num_gpus", r.num_gpus)):
            if value == 0:
                raise ConfigError(f"rollout.weight_transport=nccl broadcasts from the trainer's GPU to the engines' GPUs, "
                                  f"but {key}=0 puts that role on the CPU; give it GPUs ({key}=1) or set "
                                  f"rollout.weight_transport=auto (Ray's object store on CPU)")
        if r.placement != "disaggregated":
            raise ConfigError("rollout.weight_transport=nccl needs the engines on GPUs of their own (NCCL cannot connect "
                              "two processes on one GPU), but rollout.placement=colocated shares them with the trainer; "
                              "set rollout.placement=disaggregated, or rollout.weight_transport=auto (CUDA IPC when colocated)")
    if r.num_gpus > 1:
        raise ConfigError(
            f"rollout.num_gpus={r.num_gpus:g}: it is the share of one GPU each vLLM worker takes (at most 1); for "
            f"more GPUs per engine raise rollout.tensor_parallel_size, for more engines rollout.num_engines"
        )
    for key in ("max_num_seqs", "max_num_batched_tokens"):
        if getattr(r, key) is not None and getattr(r, key) < 1:
            raise ConfigError(f"rollout.{key} must be at least 1 (or null for vLLM's default), got {getattr(r, key)}")
    if r.max_num_seqs is not None and r.max_num_batched_tokens is not None and r.max_num_batched_tokens < r.max_num_seqs:
        raise ConfigError(f"rollout.max_num_batched_tokens={r.max_num_batched_tokens} is below rollout.max_num_seqs="
                          f"{r.max_num_seqs}: a vLLM step takes at least a token of every sequence it runs, and vLLM "
                          f"refuses this at start; raise rollout.max_num_batched_tokens to {r.max_num_seqs} or more, or "
                          f"lower rollout.max_num_seqs")
    if not 0 < cfg.rl.top_p <= 1:
        raise ConfigError(f"rl.top_p must be in (0, 1] (1: off), got {cfg.rl.top_p}")
    if cfg.rl.top_k < 0:
        raise ConfigError(f"rl.top_k must be 0 (off) or more, got {cfg.rl.top_k}")
    if r.num_gpus == 0 and r.max_num_batched_tokens is not None and r.max_num_batched_tokens < r.max_model_len:
        raise ConfigError(
            f"rollout.max_num_batched_tokens={r.max_num_batched_tokens} is below rollout.max_model_len="
            f"{r.max_model_len}: on CPU every prompt is prefilled in one vLLM step (docs/known-issues.md), so the "
            f"token budget must hold the longest sequence; raise rollout.max_num_batched_tokens (or leave it null)"
        )
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
        for key in ("num_cpus_per_worker", "num_gpus_per_worker"):
            if getattr(g, key) < 0:
                raise ConfigError(f"{name}.{key} must be 0 or more (a share of a {key[4:7].upper()} per rank), got "
                                  f"{getattr(g, key):g}")
        if g.num_gpus_per_worker > 1:
            raise ConfigError(
                f"{name}.num_gpus_per_worker={g.num_gpus_per_worker}: each rank drives one GPU (or a share of one); "
                f"use at most 1 and raise {name}.world_size instead"
            )
    _check_lora(cfg)
    from rlhf.config.layout import describe, gpu_layout

    layout = gpu_layout(cfg)
    where = ("rank i of each trainer group and rollout engine i share it" if r.placement == "colocated" else
             "rank i of each trainer group shares it (rollout engines take the GPUs after the trainer's)")
    crowded = {i: s for i, s in layout.shares.items() if s > 1 + 1e-9}
    if crowded:
        i, s = next(iter(crowded.items()))
        groups = trainer_groups(cfg)
        parts = [f"{name}.num_gpus_per_worker={groups[name].num_gpus_per_worker:g}" for name, ranks in layout.trainer.items()
                 if i in ranks and groups[name].num_gpus_per_worker]
        parts += [f"rollout.num_gpus={r.num_gpus:g}" for gpus in layout.rollout if i in gpus and r.num_gpus]
        raise ConfigError(
            f"GPU {i} would hold {s:g} GPUs of work ({' + '.join(parts)}): {where}; lower these shares so they add up "
            f"to at most 1"
        )
    ipc = r.weight_transport == "cuda_ipc" or (r.weight_transport == "auto" and r.placement == "colocated"
                                                and r.num_gpus > 0 and cfg.actor.num_gpus_per_worker > 0)
    lonely = [i for gpus in layout.rollout for i in gpus if i not in layout.trainer.get("actor", [])]
    if ipc and lonely:
        raise ConfigError(
            f"GPU {lonely[0]} would hold a vLLM worker but no actor rank, so CUDA IPC (the colocated transport) "
            f"cannot reach it: {describe(layout)}; make rollout.num_engines x rollout.tensor_parallel_size at most "
            f"actor.world_size, or set rollout.placement=disaggregated"
        )
    gpus_needed = len(layout.shares)
    if gpus_needed and cfg.trainer.ray_address is None:
        have = _gpu_count()
        if gpus_needed > have:
            # the keys that ask for GPUs (ref and critic follow the actor's unless set apart)
            asks = [f"{name}.num_gpus_per_worker" for name, g in trainer_groups(cfg).items()
                    if g.num_gpus_per_worker and (name == "actor" or g.num_gpus_per_worker != cfg.actor.num_gpus_per_worker)]
            asks += ["rollout.num_gpus"] * (r.num_gpus > 0)
            fix = (f"to run on the CPU set {' '.join(k + '=0' for k in asks)}" if have == 0 else
                   "lower the world sizes or rollout.num_engines"
                   + (", or use rollout.placement=colocated" if r.placement == "disaggregated" else ""))
            raise ConfigError(
                f"{', '.join(asks)} > 0 with rollout.placement={r.placement} needs {gpus_needed} GPUs for these roles "
                f"({describe(layout)}) but this machine has {have}; {fix}"
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


def validate(cfg: RunConfig) -> None:
    """Cross-field checks: everything that can be known wrong before a process starts."""
    from rlhf.algos import AGGREGATIONS, ESTIMATORS, GROUP_ESTIMATORS, KL_ESTIMATORS, POLICY_LOSSES, ROLLOUT_CORRECTIONS
    from rollout import ROLLOUT_ENGINES

    _check_layout(cfg)
    _choice("rollout.engine", cfg.rollout.engine, ROLLOUT_ENGINES)
    _choice("task.name", cfg.task.name, ["arithmetic", "arithmetic_tools"])
    _check_agent(cfg)
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
    if algo.decoupled_cap <= 1:
        raise ConfigError(f"algo.decoupled_cap must be > 1 (a token sampled by the current policy has weight 1 and must "
                          f"stay in the loss), got {algo.decoupled_cap:g}; e.g. algo.decoupled_cap=5.0")
    if algo.tis_cap < 1:
        raise ConfigError(f"algo.tis_cap must be >= 1 (a cap below 1 shrinks every on-policy token's weight), got {algo.tis_cap}")
    # mis keeps the sequences whose ratio lies in [mis_low, mis_high]: one whose rollout and trainer agree has ratio 1
    if not 0 < algo.mis_low <= 1:
        raise ConfigError(f"algo.mis_low must be in (0, 1] (a sequence whose rollout and trainer agree has ratio 1 and "
                          f"must be kept), got {algo.mis_low:g}; e.g. algo.mis_low=0.5")
    if algo.mis_high < 1:
        raise ConfigError(f"algo.mis_high must be 1 or more (a sequence whose rollout and trainer agree has ratio 1 and "
                          f"must be kept), got {algo.mis_high:g}; e.g. algo.mis_high=2.0")
    if algo.overlong_buffer < 0 or algo.overlong_buffer >= cfg.rl.max_new_tokens:
        raise ConfigError(f"algo.overlong_buffer must be in [0, rl.max_new_tokens={cfg.rl.max_new_tokens}) (the last "
                          f"tokens before the length limit where the penalty ramps; 0: off), got {algo.overlong_buffer}")
    if algo.dynamic_sampling and cfg.rl.n < 2:
        raise ConfigError("algo.dynamic_sampling=true drops every prompt whose samples all got the same reward, and with "
                          "rl.n=1 that is every prompt; raise rl.n (e.g. rl.n=8) or set algo.dynamic_sampling=false")
    if algo.kl_target is not None and algo.kl_coef == 0:
        raise ConfigError(f"algo.kl_target={algo.kl_target:g} adapts the KL coefficient by multiplying it, and from "
                          f"algo.kl_coef=0 it stays 0 (no KL penalty at all); set a starting algo.kl_coef (e.g. 0.05)")
    ppm = cfg.rl.prompts_per_step
    if ppm % algo.mini_batches:
        divisors = [d for d in range(1, ppm + 1) if ppm % d == 0]
        near = sorted(divisors, key=lambda d: abs(d - algo.mini_batches))[:2]
        raise ConfigError(f"rl.prompts_per_step={ppm} must be divisible by algo.mini_batches={algo.mini_batches} (each "
                          f"mini-batch takes whole prompts); set algo.mini_batches={' or '.join(map(str, sorted(near)))}, "
                          f"or rl.prompts_per_step to a multiple of {algo.mini_batches}")
    for name, group in trainer_groups(cfg).items():
        samples = ppm // algo.mini_batches * cfg.rl.n
        if samples % group.dp_size:
            n = next(k for k in range(cfg.rl.n + 1, cfg.rl.n + group.dp_size + 1) if ppm // algo.mini_batches * k % group.dp_size == 0)
            raise ConfigError(
                f"each mini-batch (rl.prompts_per_step / algo.mini_batches * rl.n = {samples} samples) must divide evenly "
                f"over {name}'s {group.dp_size} data-parallel ranks ({name}.world_size / {name}.tp_size); e.g. rl.n={n}, "
                f"or rl.prompts_per_step / algo.mini_batches a multiple of {group.dp_size}"
            )
    for path, value in {"sft.steps": cfg.sft.steps, "rl.steps": cfg.rl.steps, "eval.every": cfg.eval.every,
                        "trainer.save_every": cfg.trainer.save_every, "trainer.keep_last": cfg.trainer.keep_last}.items():
        if value < 0:
            raise ConfigError(f"{path} must be 0 or more, got {value}")
    dp = cfg.actor.dp_size
    if cfg.sft.batch_size % dp:
        raise ConfigError(f"sft.batch_size={cfg.sft.batch_size} must be divisible by the actor's {dp} data-parallel ranks "
                          f"(actor.world_size / actor.tp_size); e.g. sft.batch_size={-(-cfg.sft.batch_size // dp) * dp}")
    if algo.critic_pretrain_steps and not algo.uses_critic:
        raise ConfigError(
            f"algo.critic_pretrain_steps={algo.critic_pretrain_steps} needs a critic (algo.adv_estimator=gae, "
            f"e.g. algo=ppo); algo.adv_estimator={algo.adv_estimator} has none, so set algo.critic_pretrain_steps=0 "
            f"or algo=ppo"
        )
    if algo.critic_pretrain_steps < 0 or (cfg.rl.steps and algo.critic_pretrain_steps >= cfg.rl.steps):
        raise ConfigError(
            f"algo.critic_pretrain_steps must be in [0, rl.steps={cfg.rl.steps}) so the actor trains at all, "
            f"got {algo.critic_pretrain_steps}; raise rl.steps or lower algo.critic_pretrain_steps"
        )
    _check_lengths(cfg)
    if cfg.data.eval_files and not cfg.data.train_files:
        raise ConfigError("data.eval_files needs data.train_files (with no training files the built-in task runs, "
                          "with its own held-out problems); add data.train_files=[...] or set data.eval_files=[]")
    from rlhf.data.files import check_columns, check_path as check_data_path
    from rlhf.data.rows import DataError

    for key, files in (("data.train_files", cfg.data.train_files), ("data.eval_files", cfg.data.eval_files)):
        for file in files:
            problem = check_data_path(file)
            if problem:
                hint = "" if "save_to_disk" in problem else (
                    "; give .jsonl/.json, .parquet or .csv files (a glob pattern such as train-*.parquet reads every "
                    "match) or a folder written by datasets' save_to_disk")
                raise ConfigError(f"{key}: {problem}{hint}")
            try:
                check_columns(file, cfg.data)
            except DataError as e:
                raise ConfigError(f"{key}: {e}") from e
    if cfg.eval.pass_k < 0:
        raise ConfigError(f"eval.pass_k must be 0 (off) or more, got {cfg.eval.pass_k}")
    if cfg.eval.pass_temperature <= 0:
        raise ConfigError(f"eval.pass_temperature must be > 0 (pass@k samples k answers per prompt), got "
                          f"{cfg.eval.pass_temperature:g}; e.g. eval.pass_temperature=1.0")
    if not cfg.trainer.output_dir.strip():
        raise ConfigError("trainer.output_dir is empty, which would write the run into the current folder; give a "
                          "folder (e.g. trainer.output_dir=outputs/run1) or leave the default (outputs/<date>_<time>)")
    if cfg.trainer.rollout_dump_every < 0:
        raise ConfigError(f"trainer.rollout_dump_every must be 0 or more, got {cfg.trainer.rollout_dump_every}")
    if cfg.rl.temperature <= 0:
        raise ConfigError(f"rl.temperature must be > 0 for sampling (evaluation decodes greedily on its own), got "
                          f"{cfg.rl.temperature:g}; e.g. rl.temperature=1.0")
    if cfg.model.path is not None:
        model = _check_model_folder(cfg.model.path, cfg.model.trust_remote_code)
        _check_heads(cfg, model, f"model.path={cfg.model.path}")
        _check_positions(cfg, model, f"the model in {cfg.model.path} (max_position_embeddings in its config.json)",
                         "lower rollout.max_model_len")
    else:
        _check_arch(cfg.model.arch)
        _check_heads(cfg, cfg.model.arch, "the embedded model (model.arch)")
        _check_positions(cfg, cfg.model.arch, "the embedded model (model.arch.max_position_embeddings)",
                         "lower rollout.max_model_len or raise model.arch.max_position_embeddings")
    _check_ranges(cfg)
    if not cfg.data.train_files and cfg.task.name == "arithmetic_tools":
        _check_tool_task(cfg)
    elif not cfg.data.train_files:
        from rlhf.data.arithmetic import problem_count

        total = problem_count(cfg.task.max_operand, cfg.task.ops)
        if cfg.task.num_eval >= total // 2:
            raise ConfigError(
                f"task.num_eval={cfg.task.num_eval} would hold out half or more of the {total} problems of the built-in "
                f"task (task.max_operand={cfg.task.max_operand}, task.ops={cfg.task.ops!r}), leaving too few to train "
                f"on; lower task.num_eval below {total // 2} or raise task.max_operand"
            )
    _check_cpus(cfg)
    twice = sorted({name for name in cfg.trainer.loggers if cfg.trainer.loggers.count(name) > 1})
    if twice:
        raise ConfigError(f"trainer.loggers={cfg.trainer.loggers} lists {', '.join(twice)} more than once; give each "
                          f"tracker once, e.g. trainer.loggers=[{','.join(dict.fromkeys(cfg.trainer.loggers))}]")
    _check_reward(cfg)


def _check_lengths(cfg: RunConfig) -> None:
    """Prompt and generation must fit rollout.max_model_len; errors name the keys that were set,
    not the prompt limit derived from them (RunConfig.prompt_limit)."""
    width, limit = cfg.rollout.max_model_len, cfg.data.max_prompt_tokens
    key, longest = max((("rl.max_new_tokens", cfg.rl.max_new_tokens), ("eval.max_new_tokens", cfg.eval.max_new_tokens)),
                       key=lambda kv: kv[1])
    if longest >= width:
        raise ConfigError(
            f"{key}={longest} leaves no room for a prompt in rollout.max_model_len={width} (prompt and generation "
            f"share it); raise rollout.max_model_len above {longest} or lower {key}"
        )
    if limit is not None and limit < 1:
        raise ConfigError(f"data.max_prompt_tokens must be at least 1 (or null: rollout.max_model_len minus the longest "
                          f"generation, here {width - longest}), got {limit}")
    if limit is not None and limit + longest > width:
        raise ConfigError(
            f"data.max_prompt_tokens={limit} plus {key}={longest} (the longest generation) is {limit + longest} tokens, "
            f"over rollout.max_model_len={width}; lower data.max_prompt_tokens to {width - longest} or raise "
            f"rollout.max_model_len to {limit + longest}"
        )


def _check_arch(arch: dict) -> None:
    """The embedded model's shape (model.arch), which the model build would reject after start-up."""
    for key, value in arch.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.arch.{key} must be a positive integer, got {value!r}")
    heads, kv = arch.get("num_attention_heads"), arch.get("num_key_value_heads")
    if heads and kv and heads % kv:
        fits = [d for d in range(1, heads + 1) if heads % d == 0]
        raise ConfigError(f"model.arch.num_key_value_heads={kv} must divide model.arch.num_attention_heads={heads} (each "
                          f"key-value head serves an equal group of attention heads); use one of {', '.join(map(str, fits))}")


def _check_positions(cfg: RunConfig, model: dict, where: str, fix: str) -> None:
    """vLLM refuses a rollout.max_model_len beyond the model's positions (unless RoPE scaling
    stretches them: such configs are left to vLLM)."""
    positions = model.get("max_position_embeddings")
    if not isinstance(positions, int) or model.get("rope_scaling"):
        return
    if cfg.rollout.max_model_len > positions:
        raise ConfigError(f"rollout.max_model_len={cfg.rollout.max_model_len} is longer than the {positions} positions of "
                          f"{where}, which vLLM refuses at start; {fix}")


def _check_cpus(cfg: RunConfig) -> None:
    """A local Ray given fewer CPUs (trainer.num_cpus) than the roles ask for would leave some
    waiting for a CPU forever."""
    if cfg.trainer.ray_address is not None or cfg.trainer.num_cpus is None:
        return
    asks = [(f"{name}.world_size={g.world_size} x {name}.num_cpus_per_worker={g.num_cpus_per_worker:g}",
             g.world_size * g.num_cpus_per_worker) for name, g in trainer_groups(cfg).items()]
    asks.append((f"rollout.num_engines={cfg.rollout.num_engines} x rollout.num_cpus={cfg.rollout.num_cpus:g}",
                 cfg.rollout.num_engines * cfg.rollout.num_cpus))
    need = sum(n for _, n in asks)
    if cfg.trainer.num_cpus < need - 1e-9:
        raise ConfigError(
            f"trainer.num_cpus={cfg.trainer.num_cpus} gives the local Ray fewer CPUs than the roles ask for ({need:g}: "
            f"{', '.join(w for w, n in asks if n)}), so some would wait for a CPU forever; set trainer.num_cpus="
            f"{math.ceil(need - 1e-9)} (or null: enough for the roles), or lower the per-rank CPU shares"
        )


def _check_agent(cfg: RunConfig) -> None:
    """The environment resolves and the multi-turn limits make sense; the tokenizer needs a chat
    template, which a model folder must carry (the embedded model gets one with an environment)."""
    a = cfg.agent
    if a.env is None:
        return
    from agents.registry import PluginError, resolve_env

    try:
        resolve_env(a.env)
    except PluginError as e:
        raise ConfigError(str(e)) from e
    except Exception as e:  # the environment's module failed to load
        raise ConfigError(f"agent.env={a.env!r}: loading it failed ({type(e).__name__}: {e})") from e
    for key, value, least in (("max_turns", a.max_turns, 1), ("max_tool_output_chars", a.max_tool_output_chars, 1),
                              ("tool_workers", a.tool_workers, 1), ("max_in_flight", a.max_in_flight, 1)):
        if value < least:
            raise ConfigError(f"agent.{key} must be at least {least}, got {value}")
    if a.tool_timeout_s <= 0:
        raise ConfigError(f"agent.tool_timeout_s must be > 0 (seconds a tool call may take), got {a.tool_timeout_s:g}")
    if not cfg.data.chat_template:
        raise ConfigError("agent.env needs the chat template (tool calls and results are turns of a conversation), "
                          "but data.chat_template=false; set data.chat_template=true")
    if cfg.model.path is not None:
        import json

        folder = Path(cfg.model.path)
        config = folder / "tokenizer_config.json"
        has = (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file() or (
            config.is_file() and json.loads(config.read_text()).get("chat_template"))
        if not has:
            raise ConfigError(f"agent.env needs a tokenizer with a chat template, and the one in model.path={cfg.model.path} "
                              f"has none (no chat_template in tokenizer_config.json, no chat_template.jinja); use an "
                              f"instruct model's folder, or set its tokenizer's chat_template")


def _check_tool_task(cfg: RunConfig) -> None:
    t = cfg.task
    span = t.max_operand - 9
    if t.max_operand < 20:
        raise ConfigError(f"task.max_operand must be at least 20 for the arithmetic_tools task (operands from 10 to it), "
                          f"got {t.max_operand}")
    if t.num_train < 1 or t.num_train + t.num_eval > span * span // 2:
        raise ConfigError(f"task.num_train={t.num_train} and task.num_eval={t.num_eval} must be at least 1 and together "
                          f"at most half of the {span * span} products with operands in [10, {t.max_operand}]; lower them "
                          f"or raise task.max_operand")
    if not 0 <= t.demo_tool_skip <= 1:
        raise ConfigError(f"task.demo_tool_skip must be in [0, 1] (the share of demonstrations that skip the "
                          f"calculator), got {t.demo_tool_skip:g}")


def _check_reward(cfg: RunConfig) -> None:
    from rewards.registry import RewardResolutionError, check_call, needs_answer, resolve

    reward = cfg.reward
    if reward.fn is not None and reward.fns:
        raise ConfigError(f"reward.fn={reward.fn} and reward.fns are both set; set reward.fn=null to use the functions "
                          f"of reward.fns, or reward.fns=[] to use reward.fn alone")
    if reward.fn is None and not reward.fns and cfg.agent.env is None:
        raise ConfigError("reward.fn is null and reward.fns is empty: no reward function; set reward.fn (e.g. "
                          "reward.fn=math_answer, or path/to/file.py:function) or reward.fns (with an environment, "
                          "agent.env, its own rewards may be all there is)")
    _choice("reward.on_error", reward.on_error, ["fallback", "drop_group"])
    if reward.timeout_s <= 0:
        raise ConfigError(f"reward.timeout_s must be > 0 (seconds per reward call), got {reward.timeout_s:g}")
    if reward.num_workers < 1:
        raise ConfigError(f"reward.num_workers must be at least 1 (worker processes per reward function), got "
                          f"{reward.num_workers}")
    if not 0 <= reward.max_error_rate <= 1:
        raise ConfigError(f"reward.max_error_rate must be in [0, 1] (the share of failed reward calls that stops the "
                          f"run), got {reward.max_error_rate:g}")
    if reward.fns and all(f.weight == 0 for f in reward.fns):
        raise ConfigError("every reward.fns weight is 0, so every sample's reward would be 0 and nothing would learn; "
                          "give at least one function a weight (a weight of 0 only logs that function's score)")
    extra = cfg.data.extra_keys if cfg.data.train_files else []
    for i, (name, _, kwargs) in enumerate(reward.specs()):
        key = "reward.fn" if reward.fn is not None else f"reward.fns[{i}].name"
        try:
            check_call(resolve(name, key), name, kwargs, extra, key)
        except RewardResolutionError as e:
            raise ConfigError(str(e)) from e
        if cfg.data.train_files and cfg.data.answer_key is None and needs_answer(name):
            raise ConfigError(
                f"{key}={name} scores responses against the ground truth, but data.answer_key=null gives it none "
                f"(every sample would get the same reward); set data.answer_key to the file's answer column, or use a reward that "
                f"needs no answer (e.g. your own path/to/file.py:function)"
            )


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


def check_stages(cfg: RunConfig) -> list:
    """Every stage's config, overrides merged, through the same checks as the whole config; an
    SFT stage's files must hold an SFT target; some stage must have steps. Returns the stages."""
    from rlhf.config.stages import plan
    from rlhf.data.files import check_columns
    from rlhf.data.rows import DataError

    stages = plan(cfg)
    for stage in stages:
        over = cfg.stage_overrides.get(stage.name) or {}
        try:
            validate(stage.cfg)
        except ConfigError as e:
            raise ConfigError(f"stage_overrides.{stage.name}: {e}") from e
        if stage.kind == "sft":
            for file in stage.cfg.data.train_files:
                try:
                    check_columns(file, stage.cfg.data, sft=True)
                except DataError as e:
                    where = f"stage_overrides.{stage.name}: " if over else ""
                    raise ConfigError(f"{where}data.train_files of stage {stage.name}: {e}") from e
    if all(s.empty for s in stages):
        keys = [f"stage_overrides.{s.name}.{s.kind}.steps" if "steps" in (cfg.stage_overrides.get(s.name) or {}).get(s.kind, {})
                else f"{s.kind}.steps" for s in stages]
        raise ConfigError(f"every stage has 0 steps ({', '.join(dict.fromkeys(k + '=0' for k in keys))}) and a stage of 0 "
                          f"steps is skipped, so nothing would run; give a stage steps (e.g. rl.steps=20), or train in "
                          f"epochs (sft.epochs=1)")
    return stages
