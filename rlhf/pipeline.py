"""The job: build the task and model, start the roles, run the stages (SFT warm-start, then RL),
evaluate before and after each, and hand each stage's checkpoint on."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path

import ray

from engines.base import OptimConfig
from rlhf import report, run_state
from rlhf.config import RunConfig
from rlhf.controller import Controller
from rlhf.data.arithmetic import corpus, make_splits
from rlhf.data.sampler import Sampler
from rlhf.data.tiny_model import ensure_tiny_model
from rlhf.metrics import MetricsLog, fmt, stage_bar
from rlhf.ray_auth import keep_token_local
from rlhf.roles import start_roles, start_trainer
from rlhf.stop_signal import StopSignal
from rlhf.trackers import open_trackers
from rewards.manager import RewardErrorRateExceeded, RewardManager

# Environment every role process gets (on any node of a cluster, not just this one).
_ROLE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
}
_PASS_THROUGH = ("TMPDIR", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR")


class JobError(RuntimeError):
    """A problem found before the heavy work starts, stated with its fix."""


def _check_lengths(cfg: RunConfig, tok, problems) -> None:
    longest = max(
        len(tok(p.prompt).input_ids) + len(tok(a, add_special_tokens=False).input_ids) + 1
        for p in problems
        for a in (p.answer, p.demo)
    )
    longest_prompt = max(len(tok(p.prompt).input_ids) for p in problems)
    need = max(longest, longest_prompt + max(cfg.rl.max_new_tokens, cfg.eval.max_new_tokens))
    if need > cfg.rollout.max_model_len:
        raise JobError(
            f"rollout.max_model_len={cfg.rollout.max_model_len} is shorter than the longest sequence ({need} tokens: "
            f"prompt plus rl.max_new_tokens / eval.max_new_tokens); raise rollout.max_model_len"
        )


def _start_ray(cfg: RunConfig) -> None:
    env = dict(_ROLE_ENV)
    env.update({k: os.environ[k] for k in _PASS_THROUGH if k in os.environ})
    if cfg.trainer.ray_address:
        ray.init(address=cfg.trainer.ray_address, runtime_env={"env_vars": env}, log_to_driver=True)
        return
    groups = [cfg.actor] + [cfg.ref] * cfg.algo.uses_reference + [cfg.critic] * cfg.algo.uses_critic
    need = sum(g.world_size * g.num_cpus_per_worker for g in groups) + cfg.rollout.num_cpus
    os.environ.update(env)  # a local cluster's workers inherit the driver's environment
    keep_token_local()
    ray.init(
        num_cpus=cfg.trainer.num_cpus or max(int(need + 0.999), 1),
        include_dashboard=False,
        runtime_env={"env_vars": env},
        log_to_driver=True,
    )


def _optim(cfg: RunConfig, stage, total_steps: int) -> OptimConfig:
    return OptimConfig(
        lr=stage.lr,
        weight_decay=cfg.actor.weight_decay,
        betas=tuple(cfg.actor.betas),
        warmup_steps=stage.warmup_steps,
        total_steps=total_steps,
        lr_schedule=stage.lr_schedule,
    )


def run(cfg: RunConfig) -> dict:
    start = time.time()
    resume = run_state.check(cfg)
    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    if resume:
        run_state.rewind_metrics(out, resume["step"])

    train, held_out = make_splits(
        cfg.seed, cfg.task.max_operand, cfg.task.ops, cfg.task.num_eval, cfg.task.demo_carry_error
    )
    model_path = cfg.model.path or ensure_tiny_model(cfg.model.cache_dir, corpus(train + held_out), cfg.model.arch, cfg.seed)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    if tok.eos_token_id is None:
        raise JobError(f"the tokenizer in {model_path} has no eos_token; set one in its tokenizer_config.json")
    _check_lengths(cfg, tok, train + held_out)
    log = MetricsLog(str(out), open_trackers(cfg.trainer.loggers, out, dataclasses.asdict(cfg), cfg.trainer.log_every,
                                             cfg.algo.name))
    print(f"[rlhf] model {model_path}; {len(train)} train / {len(held_out)} held-out problems; output {out}", flush=True)

    rewards = RewardManager(
        cfg.reward.specs(),
        fallback=cfg.reward.fallback,
        timeout_s=cfg.reward.timeout_s,
        num_workers=cfg.reward.num_workers,
        max_error_rate=cfg.reward.max_error_rate,
    )
    reported: set[str] = set()

    def report_reward_errors(write) -> None:
        """The first traceback of each kind of reward failure goes to the console and the run's log."""
        for kind, tb in rewards.first_tracebacks.items():
            if kind not in reported:
                reported.add(kind)
                write(f"[rlhf] first reward failure of kind {kind!r} (counted in reward/errors/{kind}):\n{tb}")
                with (out / "reward_errors.log").open("a") as f:
                    f.write(f"--- {kind}\n{tb}\n")

    _start_ray(cfg)
    roles = None
    stop = StopSignal().install()  # after Ray's start-up, which installs a SIGTERM handler of its own
    try:
        print(f"[rlhf] Ray up after {time.time() - start:.1f}s; starting the rollout engine ({cfg.rollout.engine}) and the "
              f"actor ({cfg.actor.world_size} ranks, {cfg.actor.engine})", flush=True)
        roles = start_roles(cfg, model_path, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        actor = roles.actor
        ctl = Controller(cfg, roles, tok, rewards)
        print(f"[rlhf] roles ready in {time.time() - start:.1f}s", flush=True)

        summary: dict = {"model_path": model_path}
        if resume:
            summary.update(resume["summary"], resumed_from=resume["path"])
        else:
            acc = ctl.evaluate(held_out)
            log.log("sft", 0, acc)
            summary["accuracy_before_sft"] = acc["eval/accuracy"]

        if cfg.sft.steps and not resume:
            actor.all("configure_optimizer", _optim(cfg, cfg.sft, cfg.sft.steps))
            sampler = Sampler(train, cfg.seed)
            bar = stage_bar("sft", cfg.sft.steps)
            for step in range(1, cfg.sft.steps + 1):
                m = ctl.sft_step(sampler.next(cfg.sft.batch_size))
                log.log("sft", step, m)
                stop.stop(f"during SFT at step {step} (SFT is not resumable: a new run starts it again)")
                bar.update()
                bar.set_postfix_str(fmt(m, ["sft/loss", "actor/grad_norm"]))
            bar.close()
            ctl.sync_weights()
            acc = ctl.evaluate(held_out)
            log.log("sft", cfg.sft.steps, acc)
            actor.all("save", str(out / "checkpoints" / "sft"))
        if not resume:
            summary["accuracy_after_sft"] = acc["eval/accuracy"]
            print(f"[rlhf] held-out accuracy {'after SFT' if cfg.sft.steps else 'at start'}: {acc['eval/accuracy']:.3f}",
                  flush=True)

        if cfg.rl.steps:
            if resume:
                start_path = resume["start_path"]
            else:
                start_path = str((out / "checkpoints" / "sft").resolve() if cfg.sft.steps else Path(model_path).resolve())
            rl_updates = cfg.rl.steps * cfg.algo.epochs * cfg.algo.mini_batches
            if cfg.algo.uses_reference:
                t = time.time()
                ctl.roles.ref = start_trainer(cfg, "ref", start_path, trainable=False,
                                              placement=ctl.roles.placement)
                print(f"[rlhf] reference ready in {time.time() - t:.1f}s", flush=True)
            if cfg.algo.uses_critic:
                t = time.time()
                ctl.roles.critic = start_trainer(cfg, "critic", start_path, trainable=True, head="value",
                                                 placement=ctl.roles.placement)
                print(f"[rlhf] critic ready in {time.time() - t:.1f}s", flush=True)
                ctl.roles.critic.all("configure_optimizer", _optim(cfg, cfg.critic, rl_updates))
            actor.all("configure_optimizer", _optim(cfg, cfg.rl, rl_updates))
            sampler = Sampler(train, cfg.seed + 1)
            groups = {"actor": actor, **({"critic": ctl.roles.critic} if ctl.roles.critic is not None else {})}
            first = 1
            if resume:
                run_state.restore(resume, groups)
                ctl.load_state_dict(resume["controller"])
                sampler.load_state_dict(resume["sampler"])
                rewards.load_state_dict(resume["rewards"])
                ctl.sync_weights()
                first = resume["step"] + 1
                print(f"[rlhf] resumed from {resume['path']}: continuing at RL step {first}", flush=True)
            def save_state(step: int) -> Path:
                driver = {"start_path": start_path, "controller": ctl.state_dict(), "sampler": sampler.state_dict(),
                          "rewards": rewards.state_dict(), "summary": summary}
                t = time.perf_counter()
                path = run_state.save(out, step, cfg, groups, driver)
                log.log("rl", step, {"time/checkpoint": time.perf_counter() - t})
                return path

            bar = stage_bar(cfg.algo.name, cfg.rl.steps)
            bar.update(first - 1)
            for step in range(first, cfg.rl.steps + 1):
                try:
                    m = ctl.rl_step(sampler, train_actor=step > cfg.algo.critic_pretrain_steps)
                except RewardErrorRateExceeded as e:
                    report_reward_errors(bar.write)
                    saved = out / "checkpoints" / f"rl-stopped-at-step{step - 1}"
                    actor.all("save", str(saved))
                    raise JobError(f"{e}\nThe policy as of step {step - 1} is saved in {saved}.") from e
                report_reward_errors(bar.write)
                if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.rl.steps:
                    m.update(ctl.evaluate(held_out))
                log.log("rl", step, m)
                saved = None
                if (cfg.trainer.save_every and step % cfg.trainer.save_every == 0) or stop.requested:
                    saved = save_state(step)
                    bar.write(f"[rlhf] saved {saved}")
                    stop.stop(f"after RL step {step}; the state is saved in {saved}: continue with the same overrides "
                              f"and trainer.resume=auto trainer.output_dir={out}")
                if ctl.skip_limit_reached():
                    saved = saved or save_state(step)
                    raise JobError(
                        f"the last {ctl.skipped_in_a_row} optimizer updates (up to RL step {step}) were all skipped for "
                        f"a non-finite loss or gradient norm (trainer.max_consecutive_skips="
                        f"{cfg.trainer.max_consecutive_skips}); the weights are those of the last finite update. The state "
                        f"is saved in {saved} (continue with trainer.resume={saved}). Common causes: a learning rate "
                        f"too high (rl.lr), clamps switched off (algo.log_ratio_clamp, algo.kl_clamp), or a model in "
                        f"float16 (actor.dtype)."
                    )
                bar.update()
                bar.set_postfix_str(fmt(m, ["reward/mean", "reward/groups_with_signal", "eval/accuracy"]))
            bar.close()
            acc = ctl.evaluate(held_out)
            log.log("rl", cfg.rl.steps, acc)
            actor.all("save", str(out / "checkpoints" / "rl"))
            if ctl.roles.critic is not None:
                ctl.roles.critic.all("save", str(out / "checkpoints" / "critic"))
        summary["accuracy_after_rl"] = acc["eval/accuracy"]
        summary["wall_time_s"] = round(time.time() - start, 1)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(
            "[rlhf] held-out accuracy: before SFT {accuracy_before_sft:.3f} | after SFT {accuracy_after_sft:.3f} | "
            "after RL {accuracy_after_rl:.3f} | {wall_time_s}s".format(**summary),
            flush=True,
        )
        return summary
    except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
        # A rank whose peer died may fail first (a broken collective): look for the dead one.
        dead = e if isinstance(e, ray.exceptions.RayActorError) else _find_dead(roles)
        if dead is None:
            raise
        raise JobError(_role_died(dead, roles, out)) from e
    finally:
        log.close()
        rewards.close()
        ray.shutdown()  # takes every other role process down with it
        stop.restore()
        report.build_quietly(out)


def _role_groups(roles) -> dict:
    if roles is None:
        return {}
    return {"actor": roles.actor, "ref": roles.ref, "critic": roles.critic, "rollout": roles.rollout}


def _find_dead(roles) -> "ray.exceptions.RayActorError | None":
    for group in _role_groups(roles).values():
        for worker in group.workers if group is not None else []:
            try:
                ray.get(worker.__ray_ready__.remote(), timeout=10)
            except ray.exceptions.RayActorError as e:
                return e
            except ray.exceptions.GetTimeoutError:  # alive, busy (e.g. waiting on the dead peer)
                continue
    return None


def _role_died(e: "ray.exceptions.RayActorError", roles, out: Path) -> str:
    """Which role process died, and where the run can continue from."""
    who = "a role process"
    for name, group in _role_groups(roles).items():
        for rank, worker in enumerate(group.workers if group is not None else []):
            if worker._actor_id.hex() == e.actor_id:
                who = f"rollout engine {rank}" if name == "rollout" else f"trainer role {name!r} rank {rank}"
    pid = re.search(r"\bpid: (\d+)", str(e))
    state = run_state.latest(out)
    where = (f"The last complete state is {state}: continue with the same overrides plus trainer.resume={state}."
             if state else "No state was saved (trainer.save_every=0), so the run cannot be resumed.")
    return (f"{who}{f' (pid {pid.group(1)})' if pid else ''} died, so the run stopped and every role process was shut "
            f"down. {where}\nRay's report: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
