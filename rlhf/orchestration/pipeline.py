"""The job: load the data and the model, start the roles, run the stages in order (by default SFT
warm-start, then RL), evaluate before and after each, hand each stage's checkpoint on, and
export the last one as `checkpoints/final`."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import time
from pathlib import Path

import ray

from engines.base import OptimConfig
from core import quiet
from rlhf.output import report, run_state
from rlhf.config import RunConfig
from rlhf.orchestration import preflight
from rlhf.orchestration.controller import Controller
from rlhf.data.holdout import hold_out
from rlhf.data.render import Renderer, keep_fitting
from rlhf.data.rows import DataError
from rlhf.data.sampler import Sampler
from rlhf.data.sources import load_data
from rlhf.data.tiny_model import ensure_tiny_model
from rlhf.output.export import export_final
from rlhf.output.metrics import MetricsLog, StartUp, fmt, stage_bar
from rlhf.orchestration.ray_auth import keep_token_local
from rlhf.orchestration.roles import AdaptersOff, start_roles, start_trainer
from rlhf.config.stages import Stage, plan, stage_names
from rlhf.output.finished_stages import finished, mark_finished
from rlhf.orchestration.stop_signal import StopSignal
from rlhf.output.trackers import open_trackers
from rewards.manager import RewardErrorRateExceeded, RewardManager, RewardSpec
from rlhf.orchestration.placement import role_demands, unplaceable
from rollout.group import RolloutFailed

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
_PASS_THROUGH = ("TMPDIR", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", *quiet.ENV, *quiet.CPU_ENV)


class JobError(RuntimeError):
    """A problem found before the heavy work starts, stated with its fix."""


def _start_ray(cfg: RunConfig) -> None:
    env = dict(_ROLE_ENV)
    env.update({k: os.environ[k] for k in _PASS_THROUGH if k in os.environ})
    if cfg.trainer.ray_address:
        ray.init(address=cfg.trainer.ray_address, runtime_env={"env_vars": env}, log_to_driver=True)
        return
    need = sum(d.processes * d.each["CPU"] for d in role_demands(cfg))  # every engine and rank
    os.environ.update(env)  # a local cluster's workers inherit the driver's environment
    keep_token_local()
    # "local": a cluster of this job's own, even where `ray start` (or another job on the machine)
    # left its address in Ray's temp folder, which ray.init() would otherwise join
    ray.init(
        address="local",
        num_cpus=cfg.trainer.num_cpus or max(int(need + 0.999), 1),
        include_dashboard=False,
        runtime_env={"env_vars": env},
        log_to_driver=True,
        # Every role runs in an actor of its own process; the idle workers Ray would start for
        # tasks are never used, and cost about half a CPU-second each at start-up.
        _system_config={"prestart_worker_first_driver": False},
    )


def _check_fits(cfg: RunConfig) -> None:
    """Fail at once, naming the role, when the cluster cannot hold every role process."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = unplaceable(cfg, ray.cluster_resources(), nodes)
    if problem:
        raise JobError(problem)


def _optim(cfg: RunConfig, stage, total_steps: int) -> OptimConfig:
    return OptimConfig(
        lr=stage.lr,
        weight_decay=cfg.actor.weight_decay,
        betas=tuple(cfg.actor.betas),
        warmup_steps=stage.warmup_steps,
        total_steps=total_steps,
        lr_schedule=stage.lr_schedule,
    )


def _dump_rollouts(batch, tok, path: Path) -> None:
    """One JSON line per sample: texts, reward, and per column (prompt and response) the token
    id, the trainer's log-prob before the update and the loss mask; rollout log-probs on the response."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i in range(batch.batch_size[0]):
            n = int(batch["attention_mask"][i].sum())
            ids, mask = batch["input_ids"][i, :n].tolist(), batch["response_mask"][i, :n].tolist()
            start = next((t for t, m in enumerate(mask) if m), n)
            f.write(json.dumps({
                "prompt": tok.decode(ids[:start]), "response": tok.decode(ids[start:], skip_special_tokens=True),
                "reward": float(batch["scores"][i]), "input_ids": ids, "response_mask": mask,
                "old_logprobs": batch["old_logprobs"][i, :n].tolist(),
                "rollout_logprobs": batch["rollout_logprobs"][i, :n].tolist(),
            }) + "\n")


def _env_tools(cfg: RunConfig) -> list[dict] | None:
    """The tools of the stage's environment (agent.env), which every prompt of the stage is rendered with."""
    if cfg.agent.env is None:
        return None
    from agents.registry import resolve_env

    return getattr(resolve_env(cfg.agent.env), "tools", None) or None


class _Job:
    """What the stages share: the output folder, the tokenizer, the roles, the metrics, the summary."""

    def __init__(self, cfg: RunConfig, out: Path, tok, log: MetricsLog):
        self.cfg, self.out, self.tok, self.log = cfg, out, tok, log
        self.roles = None
        self.stop: StopSignal | None = None
        self.summary: dict = {}
        self.record: dict = {}  # the running stage's summary entries so far
        self._data: dict = {}

    def data(self, stage: Stage):
        """The stage's rows, rendered prompts over the limit dropped and counted; an SFT stage's
        training rows less those held out for its eval loss (sft.eval_fraction), and those."""
        cfg = stage.cfg
        fraction = cfg.sft.eval_fraction if stage.kind == "sft" else 0.0
        key = json.dumps([dataclasses.asdict(cfg.data), dataclasses.asdict(cfg.task), cfg.prompt_limit(),
                          stage.kind, cfg.seed, fraction, cfg.agent.env])
        if key not in self._data:
            renderer = Renderer(self.tok, cfg.data.chat_template, cfg.data.system_prompt, _env_tools(cfg))
            try:
                raw = load_data(cfg.data, cfg.task, cfg.seed, tools=cfg.agent.env is not None)
                limit, width = cfg.prompt_limit(), cfg.rollout.max_model_len
                train = keep_fitting(raw.train, renderer, limit, width, sft=stage.kind == "sft")
                evals = {name: keep_fitting(rows, renderer, limit, width, sft=False) for name, rows in raw.evals.items()}
                train.rows, sft_eval = hold_out(train.rows, fraction, cfg.seed)
            except DataError as e:
                raise JobError(str(e)) from e
            if not train.rows:
                raise JobError(f"stage {stage.name}: no training row fits (data.max_prompt_tokens={limit}, "
                               f"rollout.max_model_len={width}); raise those limits")
            counts = {"data/train_rows": len(train.rows), "data/dropped_long_prompts": train.long_prompts,
                      "data/dropped_long_examples": train.long_examples,
                      **({"data/sft_eval_rows": len(sft_eval)} if fraction else {}),
                      **{f"data/{n}/eval_rows": len(f.rows) for n, f in evals.items()},
                      **{f"data/{n}/dropped_long_prompts": f.long_prompts for n, f in evals.items()}}
            dropped = train.long_prompts + train.long_examples + sum(f.long_prompts for f in evals.values())
            print(f"[rlhf] stage {stage.name}: {len(train.rows)} training rows"
                  + (f" ({len(sft_eval)} more held out for sft/eval_loss)" if sft_eval else "")
                  + "".join(f", {len(f.rows)} in eval set {n}" for n, f in evals.items())
                  + (f"; dropped {dropped} over the length limits (prompt {limit}, SFT example {width} tokens)"
                     if dropped else ""), flush=True)
            self._data[key] = (renderer, train.rows, {n: f.rows for n, f in evals.items() if f.rows}, counts, sft_eval)
        return self._data[key]

    def evaluate(self, ctl: Controller, evals, stage: Stage, step: int, label: str) -> dict:
        acc = ctl.evaluate(evals)
        if acc:
            self.log.log(stage.name, step, acc)
            parts = [f"{k.removeprefix('eval/')} {v:.3f}" for k, v in acc.items()
                     if k.startswith("eval/") and ("accuracy" in k or "pass@" in k) and (len(evals) > 1 or k.count("/") == 1)]
            print(f"[rlhf] {label}: {' | '.join(parts)} ({acc['time/eval']:.1f} s)", flush=True)
        return acc

    def save_state(self, stage: Stage, step: int, groups: dict, driver: dict) -> Path:
        """A resumable state of `stage` after `step` (see run_state), its time logged."""
        t = time.perf_counter()
        driver = {"stage": stage.name, **driver, "summary": {**self.summary, **self.record}}
        path = run_state.save(self.out, stage.name, step, self.cfg, groups, driver)
        self.log.log(stage.name, step, {"time/checkpoint": time.perf_counter() - t})
        return path

    def sft(self, stage: Stage, ctl: Controller, train, held_out, start_path: str, resume) -> None:
        """`held_out`: the rows of sft/eval_loss (sft.eval_fraction), measured every sft.eval_every
        steps and at the last."""
        cfg = stage.cfg
        actor = self.roles.actor
        steps = stage.steps_for(len(train))
        if cfg.sft.epochs is not None:
            print(f"[rlhf] stage {stage.name}: sft.epochs={cfg.sft.epochs:g} over {len(train)} rows at sft.batch_size="
                  f"{cfg.sft.batch_size} = {steps} steps (sft.steps is not used)", flush=True)
        actor.all("configure_optimizer", _optim(cfg, cfg.sft, steps))
        sampler = Sampler(train, cfg.seed + stage.index)
        first = 1
        if resume:
            run_state.restore(resume, {"actor": actor})
            sampler.load_state_dict(resume["sampler"])
            first = resume["step"] + 1
            print(f"[rlhf] resumed from {resume['path']}: continuing at SFT step {first}", flush=True)
        bar = stage_bar(stage.name, steps, initial=first - 1)
        for step in range(first, steps + 1):
            m = ctl.sft_step(sampler.next(cfg.sft.batch_size))
            if held_out and (step == steps or (cfg.sft.eval_every and step % cfg.sft.eval_every == 0)):
                m["sft/eval_loss"] = ctl.sft_eval_loss(held_out)
            self.log.log(stage.name, step, m)
            if (cfg.trainer.save_every and step % cfg.trainer.save_every == 0) or self.stop.requested:
                saved = self.save_state(stage, step, {"actor": actor},
                                        {"start_path": start_path, "sampler": sampler.state_dict()})
                bar.write(f"[rlhf] saved {saved}")
                self.stop.stop(f"after SFT step {step}; the state is saved in {saved}: continue with the same "
                               f"overrides and trainer.resume=auto trainer.output_dir={self.out}")
            bar.update()
            bar.set_postfix_str(fmt(m, ["sft/loss", "sft/eval_loss", "actor/grad_norm"]))
        bar.close()
        ctl.sync_weights()

    def rl(self, stage: Stage, ctl: Controller, train, evals, rewards: RewardManager, start_path: str, resume) -> None:
        cfg, out, actor, roles = stage.cfg, self.out, self.roles.actor, self.roles
        reported: set[str] = set()

        def report_reward_errors(write) -> None:
            """The first traceback of each kind of reward failure goes to the console and the run's log."""
            for kind, tb in list(rewards.first_tracebacks.items()):  # batches ahead score on other threads
                if kind not in reported:
                    reported.add(kind)
                    write(f"[rlhf] first reward failure of kind {kind!r} (counted in reward/errors/{kind}):\n{tb}")
                    with (out / "reward_errors.log").open("a") as f:
                        f.write(f"--- {kind}\n{tb}\n")

        rl_updates = cfg.rl.steps * cfg.algo.epochs * cfg.algo.mini_batches
        if cfg.algo.uses_reference or cfg.algo.uses_critic:
            roles.prepare_training()  # with rollout.sleep, new trainer groups load while vLLM sleeps
        if cfg.algo.uses_reference and cfg.actor.lora.rank:
            roles.ref = AdaptersOff(actor)
            print("[rlhf] reference: the actor's weights with its LoRA adapters off (the stage's start model)", flush=True)
        elif cfg.algo.uses_reference:
            t = time.time()
            roles.ref = start_trainer(cfg, "ref", start_path, trainable=False, placement=roles.placement)
            print(f"[rlhf] reference ready in {time.time() - t:.1f}s", flush=True)
        if cfg.algo.uses_critic:
            t = time.time()
            roles.critic = start_trainer(cfg, "critic", start_path, trainable=True, head="value",
                                         placement=roles.placement)
            print(f"[rlhf] critic ready in {time.time() - t:.1f}s", flush=True)
            roles.critic.all("configure_optimizer", _optim(cfg, cfg.critic, rl_updates))
        actor.all("configure_optimizer", _optim(cfg, cfg.rl, rl_updates))
        sampler = ctl.sampler = Sampler(train, cfg.seed + stage.index)
        groups = {"actor": actor, **({"critic": roles.critic} if roles.critic is not None else {})}
        first = 1
        if resume:
            run_state.restore(resume, groups)
            ctl.load_state_dict(resume["controller"])
            sampler.load_state_dict(resume["sampler"])
            rewards.load_state_dict(resume["rewards"])
            ctl.sync_weights()
            ctl.load_pending(run_state.load_pending(resume))  # batches in flight at the save relaunch on these weights
            first = resume["step"] + 1
            print(f"[rlhf] resumed from {resume['path']}: continuing at RL step {first}", flush=True)

        def position(entries=None) -> dict:
            """The data position and counters now, and the batches generated ahead (`entries`: as
            they stood at another moment, see RolloutQueue.entries)."""
            # the batches first: saving one that draws as it goes (dynamic sampling refills) waits for
            # it, and the data position and counters must be those after its draws
            pending = ctl.rollouts.state_dict(entries)
            return copy.deepcopy({"start_path": start_path, "controller": ctl.state_dict(),
                                  "sampler": sampler.state_dict(), "rewards": rewards.state_dict(),
                                  run_state.PENDING: pending})

        def save_state(step: int, driver: dict | None = None) -> Path:
            return self.save_state(stage, step, groups, driver or position())

        bar = stage_bar(stage.name if stage.name != "rl" else cfg.algo.name, cfg.rl.steps, initial=first - 1)
        for step in range(first, cfg.rl.steps + 1):
            # the data position, counters and batches ahead this step starts from (the batches' state is
            # read only if the step fails: reading it waits for those that cannot be launched again)
            before, ahead = {k: v for k, v in position([]).items() if k != run_state.PENDING}, ctl.rollouts.entries()
            try:
                m = ctl.rl_step(sampler, train_actor=step > cfg.algo.critic_pretrain_steps, more=cfg.rl.steps - step)
            except RolloutFailed as e:
                if e.after_update:  # the step trained, then its push failed: a resumed run pushes first
                    saved = save_state(step)
                    raise JobError(f"{e}.\nRL step {step} trained, but its weights could not reach the rollout "
                                   f"engines (its metrics row is not written). The state after it is saved in {saved}: "
                                   f"continue with the same overrides plus trainer.resume=auto trainer.output_dir={out}"
                                   ) from e
                # the trainer is still where step - 1 left it: save that, with the position from before this step
                saved = save_state(step - 1, {**before, run_state.PENDING: ctl.rollouts.state_dict(ahead)})
                raise JobError(f"{e}.\nThe state after RL step {step - 1} is saved in {saved}: continue with the same "
                               f"overrides plus trainer.resume=auto trainer.output_dir={out}") from e
            except RewardErrorRateExceeded as e:
                report_reward_errors(bar.write)
                saved = out / "checkpoints" / f"{stage.name}-stopped-at-step{step - 1}"
                actor.all("save", str(saved))
                raise JobError(f"{e}\nThe policy as of step {step - 1} is saved in {saved}.") from e
            report_reward_errors(bar.write)
            if cfg.trainer.rollout_dump_every and step % cfg.trainer.rollout_dump_every == 0:
                _dump_rollouts(ctl.last_batch, self.tok, out / "rollouts" / f"{stage.name}-step{step}.jsonl")
            if cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.rl.steps:
                m.update(ctl.evaluate(evals))
            self.log.log(stage.name, step, m)
            saved = None
            if (cfg.trainer.save_every and step % cfg.trainer.save_every == 0) or self.stop.requested:
                saved = save_state(step)
                bar.write(f"[rlhf] saved {saved}")
                self.stop.stop(f"after RL step {step}; the state is saved in {saved}: continue with the same overrides "
                               f"and trainer.resume=auto trainer.output_dir={out}")
            if ctl.skip_limit_reached():
                saved = saved or save_state(step)
                raise JobError(
                    f"the last {ctl.skipped_in_a_row} optimizer updates (up to RL step {step} of stage {stage.name}) were "
                    f"all skipped for a non-finite loss or gradient norm (trainer.max_consecutive_skips="
                    f"{cfg.trainer.max_consecutive_skips}); the weights are those of the last finite update. The state "
                    f"is saved in {saved} (continue with trainer.resume={saved}). Common causes: a learning rate "
                    f"too high (rl.lr), clamps switched off (algo.log_ratio_clamp, algo.kl_clamp), or a model in "
                    f"float16 (actor.dtype)."
                )
            bar.update()
            bar.set_postfix_str(fmt(m, ["reward/mean", "reward/groups_with_signal", "eval/accuracy"]))
        bar.close()
        if roles.critic is not None:
            roles.critic.all("save", str(out / "checkpoints" / ("critic" if stage.name == "rl" else f"critic-{stage.name}")))
        for name in ("ref", "critic"):
            if getattr(roles, name) is not None:
                getattr(roles, name).shutdown()
                setattr(roles, name, None)


def _role_lines(roles, began: float, cfg: RunConfig) -> tuple[str, str]:
    """The rollout engines' and the actor ranks' start-up, from what their processes noted
    (rlhf.orchestration.workers): when the last of each was ready after the roles began starting (together), the
    steps of its start-up (`process`: until its process ran our code) and its CPU seconds."""

    def last(reports: list[dict], what: str) -> str:
        i = max(range(len(reports)), key=lambda j: reports[j]["ready_at"])
        s = reports[i]
        steps = [f"process {max(s['code_at'] - began, 0.0):.1f} s"] + [f"{k} {v:.1f} s" for k, v in s["steps"].items()]
        return (f"ready {s['ready_at'] - began:.1f} s after the roles began ({what} {i}: {', '.join(steps)}; "
                f"{s['cpu']:.1f} s of CPU)")

    n = len(roles.rollout.workers)
    return (f"rollout engine{'s' if n > 1 else ''} ({cfg.rollout.engine}) "
            + last(ray.get([w.startup.remote() for w in roles.rollout.workers]), "engine"),
            f"actor ({cfg.actor.world_size} ranks, {cfg.actor.engine}) " + last(roles.actor.all("startup"), "rank"))


def run(cfg: RunConfig, startup: StartUp | None = None) -> dict:
    """`startup`: the start-up's clock, from the process's start (rlhf.main), or from now."""
    start = time.time()
    startup = startup or StartUp(start)
    resume = preflight.check(cfg)
    out = Path(cfg.trainer.output_dir)
    names = stage_names(cfg)
    stages = [s for s in plan(cfg) if not s.empty]

    # Finished stages: those before a resumed one, or, on a restart in the same folder, the
    # leading stages whose checkpoint is complete. The first stage to run starts from the last.
    done: dict[str, dict] = {}
    for i, stage in enumerate(stages):
        record = ({} if stage.name != resume.get("stage", "rl") else None) if resume else finished(stage, out, stages[:i])
        if record is None:
            break
        done[stage.name] = record
    model_path = cfg.model.path
    try:  # every row of every stage to run, checked before anything is written (read once: load_data keeps them)
        texts = load_data(cfg.data, cfg.task, cfg.seed, tools=cfg.agent.env is not None).texts if model_path is None else []
        for stage in stages:
            if stage.name not in done:
                load_data(stage.cfg.data, stage.cfg.task, stage.cfg.seed, tools=stage.cfg.agent.env is not None)
    except DataError as e:
        raise JobError(str(e)) from e
    if model_path is None:
        # the embedded model speaks a chat template (with tool calls) where a stage has an
        # environment or the task is the tool task; plain text otherwise
        chat = cfg.task.name == "arithmetic_tools" or any(s.cfg.agent.env is not None for s in stages)
        model_path = ensure_tiny_model(cfg.model.cache_dir, texts, cfg.model.arch, cfg.seed, chat=chat)
    # written only now: a refused stage or a bad row leaves no output folder (nor another config.json) behind
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    if resume:
        saved_stage = resume.get("stage", "rl")
        run_state.rewind_metrics(out, saved_stage, resume["step"], names[names.index(saved_stage) + 1:])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    if tok.eos_token_id is None:
        raise JobError(f"the tokenizer in {model_path} has no eos_token; set one in its tokenizer_config.json")
    last_done = [s for s in stages if s.name in done]
    start_path = str(last_done[-1].checkpoint(out).resolve()) if last_done and not resume else model_path
    log = MetricsLog(str(out), open_trackers(cfg.trainer.loggers, out, dataclasses.asdict(cfg), cfg.trainer.log_every,
                                             cfg.algo.name))
    job = _Job(cfg, out, tok, log)
    job.summary = {"model_path": model_path}
    startup.done("model and tokenizer", f"{model_path}; stages {', '.join(s.name for s in stages) or 'none'}; output {out}",
                 own=True)
    for stage in last_done:
        if not resume:
            job.summary.update(done[stage.name]["summary"])
            print(f"[rlhf] stage {stage.name} finished in an earlier run ({stage.checkpoint(out)}): skipped", flush=True)
    if resume:
        job.summary.update(resume["summary"], resumed_from=resume["path"])

    _start_ray(cfg)
    startup.done("Ray")
    job.stop = StopSignal().install()  # after Ray's start-up, which installs a SIGTERM handler of its own
    try:
        _check_fits(cfg)
        for stage in stages:  # every stage's rows read and checked before the roles start (minutes)
            if stage.name not in done:
                job.data(stage)
        startup.done("data", own=True)
        began = time.time()
        job.roles = start_roles(cfg, start_path, tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        for line in _role_lines(job.roles, began, cfg):
            print(f"[rlhf] start-up: {line}", flush=True)
        counts = job.roles.actor.all("parameter_counts")[0]
        lora = cfg.actor.lora
        adapters = (f" (LoRA rank {lora.rank} on {counts['adapted_layers']} layers)" if lora.rank else "")
        order = ("rollout, then actor (they share GPUs)" if job.roles.one_after_the_other
                 else "rollout and actor started together")
        startup.done("roles", f"{order}; actor: {counts['trainable']:,} of {counts['total']:,} "
                              f"parameters train{adapters}")
        print(f"[rlhf] start-up: {startup.total():.1f} s in all", flush=True)
        for i, stage in enumerate(stages):
            if stage.name in done:
                continue
            renderer, train, evals, counts, sft_eval = job.data(stage)
            stage_resume = resume if resume and resume.get("stage", "rl") == stage.name else None
            if not stage_resume:  # a resumed stage has its step-0 row already
                log.log(stage.name, 0, counts)
            rewards = RewardManager([RewardSpec(*spec) for spec in stage.cfg.reward.specs()], fallback=stage.cfg.reward.fallback,
                                    timeout_s=stage.cfg.reward.timeout_s, num_workers=stage.cfg.reward.num_workers,
                                    max_error_rate=stage.cfg.reward.max_error_rate)
            try:
                ctl = Controller(stage.cfg, job.roles, tok, rewards, renderer, stream=stage.name)
                record = job.record = {}
                if not done and not resume and stage is stages[0]:
                    acc = job.evaluate(ctl, evals, stage, 0, "at start")
                    if acc:
                        record["accuracy_at_start"] = acc["eval/accuracy"]
                steps = stage.steps_for(len(train))
                if stage.kind == "sft":
                    job.sft(stage, ctl, train, sft_eval, stage_resume["start_path"] if stage_resume else start_path,
                            stage_resume)
                else:
                    job.rl(stage, ctl, train, evals, rewards, stage_resume["start_path"] if stage_resume else start_path,
                           stage_resume)
                acc = job.evaluate(ctl, evals, stage, steps, f"after {stage.name}")
                if acc:
                    record[f"accuracy_after_{stage.name}"] = acc["eval/accuracy"]
            finally:
                rewards.close()
            ckpt = stage.checkpoint(out)
            job.roles.actor.all("save", str(ckpt))
            tok.save_pretrained(ckpt)  # the tokenizer as the run uses it, chat template included
            job.summary.update(record)
            mark_finished(stage, out, stages[:i], {"summary": record})
            start_path = str(ckpt.resolve())
        final = export_final(job.roles.actor, tok, out / "checkpoints" / "final")
        job.summary["final_checkpoint"] = str(final)
        job.summary["wall_time_s"] = round(time.time() - start, 1)
        (out / "summary.json").write_text(json.dumps(job.summary, indent=2))
        accs = [f"{k.removeprefix('accuracy_').replace('_', ' ')} {v:.3f}" for k, v in job.summary.items()
                if k.startswith("accuracy_")]
        print(f"[rlhf] accuracy: {' | '.join(accs) or 'no eval data'} | {job.summary['wall_time_s']}s", flush=True)
        return job.summary
    except RolloutFailed as e:  # outside an RL step (an evaluation): no newer state than the last saved
        state = run_state.latest(out, names)
        raise JobError(f"{e}.\n" + (f"The last complete state is {state}: continue with the same overrides plus "
                                    f"trainer.resume={state}." if state else "No state was saved.")) from e
    except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
        # A rank whose peer died may fail first (a broken collective), or die of it: name every dead one.
        dead = _find_dead(job.roles)
        if isinstance(e, ray.exceptions.RayActorError) and all(d.actor_id != e.actor_id for d in dead):
            dead.insert(0, e)
        if not dead:
            raise
        raise JobError(_role_died(dead, job.roles, out, names)) from e
    finally:
        log.close()
        ray.shutdown()  # takes every other role process down with it
        job.stop.restore()
        report.build_quietly(out)


def _role_groups(roles) -> dict:
    if roles is None:
        return {}
    return {"actor": roles.actor, "ref": roles.ref, "critic": roles.critic, "rollout": roles.rollout}


def _find_dead(roles) -> "list[ray.exceptions.RayActorError]":
    dead = []
    for group in _role_groups(roles).values():
        for worker in group.workers if group is not None else []:
            try:
                ray.get(worker.__ray_ready__.remote(), timeout=10)
            except ray.exceptions.RayActorError as e:
                dead.append(e)
            except ray.exceptions.GetTimeoutError:  # alive, busy (e.g. waiting on the dead peer)
                continue
    return dead


def _role_died(dead: "list[ray.exceptions.RayActorError]", roles, out: Path, order: list[str]) -> str:
    """Which role processes died (a rank may die of its peer's death, so every dead one is named), and
    where the run can continue from."""
    names = [_who(e, roles) for e in dead]
    state = run_state.latest(out, order)
    where = (f"The last complete state is {state}: continue with the same overrides plus trainer.resume={state}."
             if state else "No state was saved (trainer.save_every=0), so the run cannot be resumed.")
    e = dead[0]
    return (f"{' and '.join(names)} died, so the run stopped and every role process was shut "
            f"down. {where}\nRay's report: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def _who(e: "ray.exceptions.RayActorError", roles) -> str:
    who = "a role process"
    for name, group in _role_groups(roles).items():
        for rank, worker in enumerate(group.workers if group is not None else []):
            if worker._actor_id.hex() == e.actor_id:
                who = f"rollout engine {rank}" if name == "rollout" else f"trainer role {name!r} rank {rank}"
    pid = re.search(r"\bpid: (\d+)", str(e))
    return f"{who}{f' (pid {pid.group(1)})' if pid else ''}"
