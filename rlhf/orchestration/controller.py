"""The single controller: one SFT step, one RL step, evaluation and the weight push, as calls
on the role workers. It holds no model; the algorithm math runs here on small tensors."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import torch

from core.batch import cat, pack_masked, split
from engines.flops import peak_flops, train_flops_per_token
from rewards.manager import RewardManager
from rlhf.algos import advantages as adv_lib
from rlhf.algos import shaping
from rlhf.algos.diagnostics import between_group_share, explained_variance
from rlhf.algos.kl import KLController, clamp_kl, kl_estimate
from rlhf.algos.losses import PolicyLoss, SFTLoss, ValueLoss, normaliser
from rlhf.algos.rollout_correction import decoupled_weights, mismatch_metrics, tis_weights
from rlhf.config import RunConfig
from rlhf.data.render import Renderer
from rlhf.data.rows import Row
from rlhf.orchestration.roles import Roles
from rlhf.orchestration.rollout_queue import RolloutQueue, Rollouts
from rollout.base import Sampling
from rollout.group import RolloutFailed
from rollout.trajectory import AgentConfig


def _add(timing: dict[str, float], phases: dict[str, float]) -> None:
    """Phase times of a step's generation rounds, summed over rounds."""
    for k, v in phases.items():
        timing[k] = timing.get(k, 0.0) + v


def _responses(batch) -> list[list[int]]:
    mask = batch["response_mask"].bool()
    return [row[m].tolist() for row, m in zip(batch["input_ids"], mask)]


def _row(row: Row) -> dict:
    """A row as an environment and the trajectory loop see it (agents/base.py)."""
    return {"prompt": row.prompt, "answer": row.answer, **row.extra, **({"context": row.context} if row.context else {})}


def _lag_metrics(lag: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Policy lag per sampled token (versions between the policy that sampled it and the trainer's):
    mean, max, and the share of tokens at each lag (the report's histogram)."""
    lags = lag[mask.bool()]
    if not lags.numel():
        return {"rollout/policy_lag": 0.0, "rollout/policy_lag_max": 0.0}
    out = {"rollout/policy_lag": float(lags.float().mean()), "rollout/policy_lag_max": float(lags.max())}
    out.update({f"rollout/policy_lag_share/{int(v)}": float((lags == v).float().mean()) for v in lags.unique()})
    return out


@dataclass
class Drawn:
    """A batch's prompts and the generation round that seeds it, drawn on the driver's thread."""

    rows: list[Row]
    round: int


class Controller:
    """One per stage: `cfg` is the stage's config; `stream` names its sampling seeds (the first RL
    stage, "rl", keeps the stream runs had before stages could repeat, so their numbers stand)."""

    def __init__(self, cfg: RunConfig, roles: Roles, tokenizer, rewards: RewardManager, renderer: Renderer,
                 stream: str = "rl"):
        self.cfg, self.roles, self.tok, self.rewards, self.render = cfg, roles, tokenizer, rewards, renderer
        self.stream = "" if stream == "rl" else f"{stream}:"
        self.last_batch = None  # the latest RL step's batch (for rollout dumps)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        self.kl = KLController(cfg.algo.kl_coef, cfg.algo.kl_target, cfg.algo.kl_horizon)
        self.draws = 0  # generation rounds so far: with the run's seed, it seeds the next one
        self.version = 0  # policy updates pushed to the rollout engines so far in this stage
        self.sampler = None  # the stage's training prompts (rl_step sets it)
        a = cfg.agent
        self.agent = None if a.env is None else AgentConfig(**dataclasses.asdict(a), system_prompt=cfg.data.system_prompt)
        crossing = cfg.rl.partial_rollouts or self.agent is not None  # see rollout_queue.py
        self.rollouts = RolloutQueue(cfg.rl.off_policy_steps, crossing, self._draw, self._collect,
                                     self._position, self._restore, relaunchable=not cfg.algo.dynamic_sampling)
        self._scoring = threading.Lock()  # batches ahead score on threads of their own; the reward pools are one
        self.timing: dict[str, float] = {}  # the current step's phase times
        # optimizer updates skipped for a non-finite loss or gradient norm: in all, and in a row
        self.skipped, self.skipped_in_a_row = 0, 0

    def state_dict(self) -> dict:
        """The counters a resumed run continues, the rollout group's engine restarts included (so
        `rollout/restarts_total` counts over the whole run, not since the last resume)."""
        return {"draws": self.draws, "kl": self.kl.state_dict(), "skipped": self.skipped,
                "skipped_in_a_row": self.skipped_in_a_row, "rollout_restarts": self.roles.rollout.restarts,
                "version": self.version}

    def load_state_dict(self, state: dict) -> None:
        self.draws = state["draws"]
        self.version = state.get("version", 0)
        self.kl.load_state_dict(state["kl"])
        self.skipped, self.skipped_in_a_row = state.get("skipped", 0), state.get("skipped_in_a_row", 0)
        self.roles.rollout.restarts = state.get("rollout_restarts", 0)

    def load_pending(self, state) -> None:
        """After the trainer's state and the engines' weights are restored: batches in flight at
        the save are launched again on them. A state of an earlier version holds one ready batch."""
        if isinstance(state, dict):
            state = [{"ready": state}]
        self.rollouts.load_state_dict(state or [])

    def _position(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "draws": self.draws}

    def _restore(self, position: dict) -> None:
        self.sampler.load_state_dict(position["sampler"])
        self.draws = position["draws"]

    def count_skips(self, updates: list[dict]) -> int:
        """Count the updates (actor or critic) whose step the engine skipped; returns this step's."""
        now = 0
        for u in updates:
            if u.get("actor/skipped_step", 0.0) or u.get("critic/skipped_step", 0.0):
                now += 1
                self.skipped_in_a_row += 1
            else:
                self.skipped_in_a_row = 0
        self.skipped += now
        return now

    def skip_limit_reached(self) -> bool:
        limit = self.cfg.trainer.max_consecutive_skips
        return limit > 0 and self.skipped_in_a_row >= limit

    def prompt_ids(self, rows: list[Row]) -> list[list[int]]:
        return [self.render.prompt_ids(r) for r in rows]

    def decode(self, batch) -> list[str]:
        return self.tok.batch_decode(_responses(batch), skip_special_tokens=True)

    def sync_weights(self) -> dict[str, float]:
        t = time.perf_counter()
        sent = self.roles.sync_weights()
        elapsed = time.perf_counter() - t
        return {"time/push": elapsed, "weight_sync/gb_per_s": sent / 1e9 / max(elapsed, 1e-9)}

    def _sample(self, rows: list[Row], sampling: Sampling, restart: bool = True):
        """Single-turn samples or, with an environment (agent.env), multi-turn trajectories: the
        batch, each sample's conversation (None single-turn) and the `agent/*` metrics."""
        group = self.roles.rollout
        if self.agent is None:
            return group.generate(self.prompt_ids(rows), sampling, restart=restart), None, {}
        got = group.trajectories([_row(r) for r in rows], sampling, self.agent, restart=restart)
        return got.batch, got.messages, got.stats

    def _score(self, rows: list[Row], batch, messages, training: bool):
        """The reward functions' scores (of the last assistant turn, with the whole conversation for
        functions that take it), plus an environment's own rewards (summed over its episode)."""
        groups = batch["group_ids"].tolist()
        if messages is None:
            responses, extras = self.decode(batch), [rows[g].extra for g in groups]
        else:
            responses = [next((m["content"] for m in reversed(c) if m["role"] == "assistant"), "") for c in messages]
            extras = [{**rows[g].extra, "messages": c} for g, c in zip(groups, messages)]
        with self._scoring:
            scored = self.rewards.score([rows[g].prompt for g in groups], responses, [rows[g].answer for g in groups],
                                        extras, count_towards_limit=training)
        if "env_rewards" in batch.keys():
            scored.rewards = [r + float(e) for r, e in zip(scored.rewards, batch["env_rewards"])]
        return scored

    def evaluate(self, evals: dict[str, list[Row]]) -> dict[str, float]:
        """Per eval set: greedy decoding through the rollout engine (multi-turn with an environment)
        scored by the stage's reward (accuracy: the share given full credit, reward >= 1), and
        with `eval.pass_k` = k > 0 the share of prompts with at least one of k samples right (pass@k)."""
        if not evals:
            return {}
        t = time.perf_counter()
        k = self.cfg.eval.pass_k
        out, totals = {}, Counter()
        for name, rows in evals.items():
            greedy = Sampling(n=1, temperature=0.0, max_new_tokens=self.cfg.eval.max_new_tokens, stop=tuple(self.cfg.rl.stop))
            self.roles.prepare_rollout()
            batch, messages, _ = self._sample(rows, greedy)
            scores = self._score(rows, batch, messages, False).rewards
            right = sum(s >= 1.0 for s in scores)
            out[f"eval/{name}/accuracy"] = right / len(rows)
            totals.update(right=right, reward=sum(scores), problems=len(rows))
            if k:
                sampled = Sampling(n=k, temperature=self.cfg.eval.pass_temperature, max_new_tokens=self.cfg.eval.max_new_tokens,
                                   stop=tuple(self.cfg.rl.stop), seed=random.Random(f"{self.cfg.seed}:eval").randrange(2**30))
                batch, messages, _ = self._sample(rows, sampled)
                hit = torch.tensor(self._score(rows, batch, messages, False).rewards).view(len(rows), k).ge(1.0).any(-1)
                out[f"eval/{name}/pass@{k}"] = float(hit.float().mean())
                totals.update(passed=int(hit.sum()))
        out.update({
            "eval/accuracy": totals["right"] / totals["problems"],
            "eval/reward": totals["reward"] / totals["problems"],
            "eval/num_problems": totals["problems"],
            "time/eval": time.perf_counter() - t,
        })
        if k:
            out[f"eval/pass@{k}"] = totals["passed"] / totals["problems"]
        return out

    def sft_step(self, rows: list[Row]) -> dict[str, float]:
        t = time.perf_counter()
        batch = pack_masked([self.render.sft_example(r) for r in rows], self.pad)
        tokens = float(batch["response_mask"].sum())
        self.roles.prepare_training()
        metrics = self.roles.actor.dp("train_step", batch, SFTLoss(), tokens)[0]
        metrics["sft/loss"] = metrics.pop("loss")
        metrics["time/step"] = time.perf_counter() - t
        return metrics

    def sft_eval_loss(self, rows: list[Row]) -> float:
        """The SFT loss on `rows` without training (token-mean NLL over the loss-masked tokens),
        from the trainer's log-prob forward: no gradient, no optimizer state or RNG touched."""
        batch = pack_masked([self.render.sft_example(r) for r in rows], self.pad)
        self.roles.prepare_training()
        logprobs = torch.cat(self.roles.actor.dp("logprobs", batch))
        return float(-(logprobs * batch["response_mask"]).sum() / batch["response_mask"].sum())

    def _draw(self, want: int | None = None) -> Drawn:
        self.draws += 1
        return Drawn(self.sampler.next(self.cfg.rl.prompts_per_step if want is None else want), self.draws)

    def _generate_and_score(self, drawn: Drawn, group_offset: int, timing: dict[str, float], restart: bool):
        cfg = self.cfg
        sampling = Sampling(n=cfg.rl.n, temperature=cfg.rl.temperature, max_new_tokens=cfg.rl.max_new_tokens,
                            top_p=cfg.rl.top_p, top_k=cfg.rl.top_k, stop=tuple(cfg.rl.stop),
                            seed_per_prompt=cfg.rollout.seed_per_prompt,
                            seed=random.Random(f"{cfg.seed}:{self.stream}{drawn.round}").randrange(2**30))
        t = time.perf_counter()
        self.roles.prepare_rollout()
        batch, messages, stats = self._sample(drawn.rows, sampling, restart)
        _add(timing, {"time/generate": time.perf_counter() - t, **self.roles.rollout.timing})
        t = time.perf_counter()
        scored = self._score(drawn.rows, batch, messages, True)
        _add(timing, {"time/reward": time.perf_counter() - t})
        batch["scores"] = torch.tensor(scored.rewards, dtype=torch.float32)
        batch["reward_failed"] = torch.tensor(scored.failed)
        batch["group_ids"] = batch["group_ids"] + group_offset
        scored.named.update(stats)
        return batch, scored

    def _collect(self, drawn: Drawn, version: int, restart: bool = True) -> Rollouts:
        """Generate and score `rl.prompts_per_step` groups, the first round's prompts `drawn`. With
        dynamic sampling (DAPO), groups whose rewards are all equal teach nothing: they are dropped
        and new prompts drawn, for up to `algo.max_sampling_rounds` rounds; if still short, equal
        groups fill the batch. Touches the reward manager (and, refilling, the sampler and
        `draws`), never the step's other state: it may run on a thread of its own beside the
        trainer (with `restart=False`, see `RolloutGroup.generate`). Every sampled token is marked
        with `version`, the policy it was launched on."""
        cfg, algo = self.cfg, self.cfg.algo
        want, n = cfg.rl.prompts_per_step, cfg.rl.n
        kept, fillers, named, errors, offset, timing = [], [], [], Counter(), 0, {}
        for rounds in range(1, (algo.max_sampling_rounds if algo.dynamic_sampling else 1) + 1):
            have = sum(b.batch_size[0] for b in kept) // n
            batch, scored = self._generate_and_score(drawn if rounds == 1 else self._draw(want - have), offset, timing,
                                                     restart)
            offset += batch.batch_size[0] // n
            named.append(scored.named)
            errors.update(scored.errors)
            if not algo.dynamic_sampling:
                kept.append(batch)
                break
            signal = (batch["scores"].view(-1, n).std(-1) > 0).repeat_interleave(n)
            kept.append(batch[signal])
            fillers.append(batch[~signal])
            if have + int(signal.sum()) // n >= want:
                break
        batch = cat([b for b in kept + fillers if b.batch_size[0]], self.pad)[: want * n]
        # the engines count the pushes that landed during the call; the launch's version is the base
        batch["rollout_versions"] = batch["rollout_versions"] + version
        merged = {k: sum(d[k] for d in named if k in d) / sum(k in d for d in named) for d in named for k in d}
        return Rollouts(batch, merged, dict(errors), rounds, timing, version)

    def rl_step(self, sampler, train_actor: bool = True, more: int = 0) -> dict[str, float]:
        """One RL step, as data: this step's rollouts -> reward shaping and the samples that leave
        the loss -> old and reference log-probs, values -> advantages -> updates -> the push.
        `train_actor=False` (critic pre-training): only the critic learns; the policy, and so the
        rollout weights, stay as they are. `more`: steps left after this one, for batches
        generated ahead (rl.off_policy_steps)."""
        algo, timing, t0 = self.cfg.algo, {}, time.perf_counter()
        self.sampler = sampler
        got, timing["time/rollout_take_wait"] = self.rollouts.take(self.version, more)
        batch, self.timing = got.batch, got.timing
        scores, lengths = batch["scores"].clone(), batch["response_mask"].sum(-1)
        batch = self._shape(batch)
        timing["time/rollout"], t = time.perf_counter() - t0, time.perf_counter()
        self.roles.prepare_training()
        # One update per batch and no reference: the training forward gives the old log-probs
        # (the corrections that need them before the update take the extra forward).
        on_policy = (train_actor and algo.epochs * algo.mini_batches == 1 and self.roles.ref is None
                     and algo.rollout_correction not in ("mis", "decoupled"))
        batch, kl, stats = self._logprobs(batch, on_policy)
        timing["time/logprobs"], t = time.perf_counter() - t, time.perf_counter()
        response_mask = batch["response_mask"]  # before masked importance sampling drops any sequence
        if algo.rollout_correction == "mis":
            batch, stats["rollout/mis_masked_frac"] = shaping.drop_mismatched(batch, algo.mis_low, algo.mis_high)
        batch["policy_lag"] = (self.version - batch["rollout_versions"]).clamp(min=0)
        batch = self._advantages(batch, kl)
        train, actor_seconds = self._update(batch, train_actor, on_policy, kl)
        if on_policy:
            batch["old_logprobs"] = torch.cat(self.roles.actor.per_dp("last_logprobs"))
        stats.update(self._corrections(batch, response_mask))
        timing["time/train"] = time.perf_counter() - t
        timing.update(self._push(train_actor, more))
        timing["time/step"] = time.perf_counter() - t0
        trained = float(batch["attention_mask"].sum()) * self.cfg.algo.epochs if train_actor else 0.0
        timing["throughput/trained_tokens_per_s"] = trained / max(timing["time/train"], 1e-9)
        self.last_batch = batch
        return {**self._rollout_metrics(batch, scores, lengths, got), **stats, **train, **self.timing, **timing,
                **(self._device_metrics(batch, actor_seconds) if train_actor else {})}

    def _shape(self, batch):
        """Reward shaping, then the samples that leave the loss (rlhf/algos/shaping.py), in order."""
        algo = self.cfg.algo
        batch = shaping.overlong_penalty(batch, algo.overlong_buffer, self.cfg.rl.max_new_tokens)
        if self.cfg.reward.on_error == "drop_group":
            batch = shaping.drop_failed_groups(batch)
        return shaping.drop_truncated(batch) if algo.overlong_filter else batch

    def _logprobs(self, batch, on_policy: bool):
        """The trainer's log-probs before the update (unless the update's own forward gives them),
        the reference's with the KL estimate, the critic's values."""
        algo, stats, kl = self.cfg.algo, {}, None
        if not on_policy:
            batch["old_logprobs"] = torch.cat(self.roles.actor.dp("logprobs", batch))
        if self.roles.ref is not None:
            batch["ref_logprobs"] = torch.cat(self.roles.ref.dp("logprobs", batch))
            kl = kl_estimate(batch["old_logprobs"], batch["ref_logprobs"], algo.kl_estimator, algo.log_ratio_clamp)
            kl, bites = clamp_kl(kl, algo.kl_clamp)
            kl = kl * batch["response_mask"]
            stats["actor/kl_rollout_batch_clamp_frac"] = float(
                (bites * batch["response_mask"]).sum() / batch["response_mask"].sum().clamp(min=1))
        if self.roles.critic is not None:
            batch["values"] = torch.cat(self.roles.critic.dp("values", batch))
        return batch, kl, stats

    def _advantages(self, batch, kl):
        algo, mask = self.cfg.algo, batch["response_mask"]
        adv, returns = adv_lib.compute(
            algo.adv_estimator, scores=batch["scores"], group_ids=batch["group_ids"], mask=mask,
            values=batch.get("values", None), kl=kl if algo.kl_mode == "reward" else None, kl_coef=self.kl.coef,
            gamma=algo.gamma, lam=algo.lam, norm_by_std=algo.norm_by_std,
        )
        batch["advantages"] = adv * mask
        if returns is not None:
            batch["returns"] = returns
        return batch

    def _update(self, batch, train_actor: bool, on_policy: bool, kl) -> tuple[dict, float]:
        """`algo.epochs` passes of `algo.mini_batches` updates of the actor (and the critic); their
        mean metrics and the actor's seconds (a critic trains in the same phase)."""
        cfg, algo, mask = self.cfg, self.cfg.algo, batch["response_mask"]
        correction = algo.rollout_correction
        policy_loss = PolicyLoss(
            kind=algo.policy_loss, clip_low=algo.clip_low, clip_high=algo.clip_high, aggregation=algo.loss_agg,
            dual_clip=algo.dual_clip, kl_coef=self.kl.coef if (kl is not None and algo.kl_mode == "loss") else 0.0,
            kl_estimator=algo.kl_estimator, entropy_coef=algo.entropy_coef, on_policy=on_policy,
            log_ratio_clamp=algo.log_ratio_clamp, seq_log_ratio_clamp=algo.seq_log_ratio_clamp, kl_clamp=algo.kl_clamp,
            tis_cap=algo.tis_cap if correction == "tis" else None,
            decoupled_cap=algo.decoupled_cap if correction == "decoupled" else None,
        )
        updates: list[dict] = []
        actor_seconds = 0.0
        for _ in range(algo.epochs):
            for mb in split(batch, algo.mini_batches):  # whole groups stay together
                mb_mask = mb["response_mask"]
                norm = normaliser(mb_mask, algo.loss_agg, cfg.rl.max_new_tokens)
                if norm == 0:
                    continue
                m = {}
                if train_actor:
                    ta = time.perf_counter()
                    m = self.roles.actor.dp("train_step", mb, policy_loss, norm)[0]
                    actor_seconds += time.perf_counter() - ta
                    m["actor/policy_loss"] = m.pop("loss")
                if self.roles.critic is not None:
                    c = self.roles.critic.dp("train_step", mb, ValueLoss(algo.value_clip), float(mb_mask.sum()))[0]
                    m.update({"critic/value_loss": c.pop("loss"), **c})
                updates.append(m)
        if not updates:
            raise RuntimeError("no response tokens left to train on (all groups dropped or empty responses)")
        train = {k: sum(u[k] for u in updates) / len(updates) for k in updates[0]}
        train["train/skipped_updates"] = float(self.count_skips(updates))
        train["train/skipped_updates_total"] = float(self.skipped)
        train["actor/updated"] = float(train_actor)
        if kl is not None:
            measured = float(kl.sum() / mask.sum().clamp(min=1))
            train["actor/kl_coef"] = self.kl.coef
            train["actor/kl_rollout_batch"] = measured
            self.kl.update(measured, batch.batch_size[0])
        if self.roles.critic is not None:
            # values from before this step's update: how well the critic predicted returns it had not seen
            train["critic/explained_var"] = explained_variance(batch["returns"], batch["values"], mask)
        return train, actor_seconds

    def _corrections(self, batch, response_mask) -> dict[str, float]:
        """The rollout/trainer gap over the sampled tokens, and how much each correction did."""
        algo, mask = self.cfg.algo, batch["response_mask"]
        out = mismatch_metrics(batch["rollout_logprobs"], batch["old_logprobs"], response_mask)
        if algo.rollout_correction == "tis":
            _, truncated = tis_weights(batch["old_logprobs"], batch["rollout_logprobs"], mask, algo.tis_cap)
            out["rollout/tis_truncated_frac"] = float(truncated.sum() / mask.sum().clamp(min=1))
        if algo.rollout_correction == "decoupled":
            weights, capped = decoupled_weights(batch["old_logprobs"], batch["rollout_logprobs"], batch["policy_lag"],
                                                mask, algo.decoupled_cap)
            out["rollout/decoupled_capped_frac"] = float(capped.sum() / mask.sum().clamp(min=1))
            out["rollout/decoupled_weight_mean"] = float(weights.sum() / (mask.sum() - capped.sum()).clamp(min=1))
        return out

    def _push(self, train_actor: bool, more: int) -> dict[str, float]:
        """The new weights into the engines (after batches in flight finish, unless they may cross
        pushes: see rollout_queue.py), then the next batch generated ahead launched on them. A
        failed batch ahead is raised by the next step, which saves this step's state first (a
        resumed run pushes the weights); pushing now could wait forever on a hung engine."""
        timing = {"time/rollout_wait": self.rollouts.before_push()} if len(self.rollouts) else {}
        push = train_actor and not self.rollouts.failed()
        if push:
            self.version += 1
        try:
            if push and self.rollouts.crossing and not self.cfg.rl.partial_rollouts and len(self.rollouts):
                # multi-turn in flight: the engines let the turns being sampled finish (see
                # rollout_queue.py) before the trainers start sending; counted as the wait
                t = time.perf_counter()
                self.roles.rollout.all("hold_for_push")
                timing["time/rollout_wait"] += time.perf_counter() - t
            timing.update(self.sync_weights() if push else {"time/push": 0.0})
        except RolloutFailed as e:
            e.after_update = True  # this step's update is done: a run can continue after it, not before
            raise
        self.rollouts.after_push(self.version, more)
        return timing

    def _device_metrics(self, batch, seconds: float) -> dict[str, float]:
        """On GPU: each trainer role's peak memory over the step, and the actor's MFU in training."""
        tokens = float(batch["attention_mask"].sum()) * self.cfg.algo.epochs
        context = float(batch["attention_mask"].sum(-1).float().mean())
        out, device = {}, None
        for name in ("actor", "ref", "critic"):
            group = getattr(self.roles, name)
            if group not in self.roles.trainers():
                continue
            stats = group.all("device_stats")
            if stats[0]["device"] == "cpu":
                return {}
            device = stats[0]["device"]
            out[f"perf/{name}_peak_memory_gb"] = max(s["peak_memory_gb"] for s in stats)
        peak = peak_flops(device)
        if peak and self.roles.model_path:
            if self._model_config is None:
                from transformers import AutoConfig

                self._model_config = AutoConfig.from_pretrained(self.roles.model_path,
                                                                trust_remote_code=self.cfg.model.trust_remote_code)
            frozen_base = self.cfg.actor.lora.rank > 0  # LoRA: no weight gradients for the base
            flops = train_flops_per_token(self._model_config, context, weight_grads=not frozen_base) * tokens
            out["perf/actor_mfu"] = flops / max(seconds, 1e-9) / (peak * self.roles.actor.world_size)
        return out

    _model_config = None

    def _rollout_metrics(self, batch, scores: torch.Tensor, lengths: torch.Tensor, got: Rollouts) -> dict[str, float]:
        mask = batch["response_mask"]
        grouped = scores.view(-1, self.cfg.rl.n)
        # Rollout engine vs trainer on the same tokens: kernels and precision differ; watch it.
        diff = (batch["rollout_logprobs"] - batch["old_logprobs"]) * mask
        ready, in_flight = self.rollouts.depth
        out = {
            "reward/mean": float(scores.mean()),
            "reward/std": float(scores.std()) if scores.numel() > 1 else 0.0,
            "reward/groups_with_signal": float((grouped.std(-1) > 0).float().mean()) if self.cfg.rl.n > 1 else 0.0,
            "reward/between_prompt_var_share": between_group_share(scores, batch["group_ids"]),
            "reward/failed_frac": float(batch["reward_failed"].float().mean()),
            "response/length_mean": float(lengths.float().mean()),
            "response/truncated_frac": float(batch["truncated"].float().mean()),
            "rollout/logprob_abs_diff_mean": float(diff.abs().sum() / mask.sum().clamp(min=1)),
            "rollout/logprob_abs_diff_max": float(diff.abs().max()),
            # mean -log p of the sampled tokens under the trainer's policy: its entropy per token,
            # estimated from the samples (exact in expectation at rl.temperature=1)
            "actor/entropy_estimate": float(-(batch["old_logprobs"] * mask).sum() / mask.sum().clamp(min=1)),
            "rollout/sampling_rounds": float(got.rounds),
            "rollout/restarts_total": float(self.roles.rollout.restarts),
            "rollout/buffer_ready": float(ready),
            "rollout/buffer_in_flight": float(in_flight),
            # tokens per second: sampled by the rollout engine (generation only), and passed through
            # the trainer (prompt and response, every epoch)
            "throughput/generated_tokens_per_s": float(lengths.sum()) / max(self.timing["time/generate"], 1e-9),
            **_lag_metrics(batch["policy_lag"], mask), **got.named,
            **{f"reward/errors/{k}": float(v) for k, v in got.errors.items()},
        }
        return out
