"""The single controller: one SFT step, one RL step, evaluation and the weight push, as calls
on the role workers. It holds no model; the algorithm math runs here on small tensors."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from concurrent.futures import Future, wait
from dataclasses import dataclass

import torch
from tensordict import TensorDict

from engines.flops import peak_flops, train_flops_per_token
from rlhf.algos import advantages as adv_lib
from rlhf.algos.diagnostics import between_group_share, explained_variance
from rlhf.algos.kl import KLController, clamp_kl, kl_estimate
from rlhf.algos.losses import PolicyLoss, SFTLoss, ValueLoss, normaliser
from rlhf.algos.rollout_correction import mis_keep, mismatch_metrics, tis_weights
from core.batch import cat, pack_masked, split
from rlhf.config import RunConfig
from rlhf.data.render import Renderer
from rlhf.data.rows import Row
from rlhf.orchestration.roles import Roles
from rewards.manager import RewardManager
from rollout.base import Sampling
from rollout.group import RolloutFailed


def _add(timing: dict[str, float], phases: dict[str, float]) -> None:
    """Phase times of a step's generation rounds, summed over rounds."""
    for k, v in phases.items():
        timing[k] = timing.get(k, 0.0) + v


def _responses(batch) -> list[list[int]]:
    mask = batch["response_mask"].bool()
    return [row[m].tolist() for row, m in zip(batch["input_ids"], mask)]


@dataclass
class Rollouts:
    """One step's generated and scored samples, what making them took, and the policy version
    (weight pushes after an update, `Controller.version`) that generated them."""

    batch: TensorDict
    named: dict[str, float]
    errors: dict[str, int]
    rounds: int
    timing: dict[str, float]
    version: int

    def state_dict(self) -> dict:
        """Tensors, numbers and strings only: `torch.load(weights_only=True)` reads it back."""
        return {"batch": self.batch.to_dict(), "size": self.batch.batch_size[0], "named": self.named,
                "errors": self.errors, "rounds": self.rounds, "timing": self.timing, "version": self.version}

    @classmethod
    def from_state_dict(cls, d: dict) -> "Rollouts":
        return cls(TensorDict(d["batch"], batch_size=[d["size"]]), d["named"], d["errors"], d["rounds"], d["timing"],
                   d["version"])


def _in_background(fn, *args) -> Future:
    """`fn(*args)` on a daemon thread: a generation blocked in `ray.get` must not hold up the
    interpreter's exit after a failure elsewhere (a ThreadPoolExecutor's threads are joined at exit)."""
    future = Future()

    def run():
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # handed to whoever takes the result
            future.set_exception(e)

    threading.Thread(target=run, name="rollout-prefetch", daemon=True).start()
    return future


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
        # rl.off_policy_steps=1: the next step's rollouts, generating while this step trains
        self._pending: Future | None = None
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

    def pending_state(self) -> dict | None:
        """The prefetched rollouts (rl.off_policy_steps=1) as `Rollouts.state_dict`, for a resumed
        run to train on exactly what this one would have. None without any, or when their
        generation failed: the failure is raised by the next step, and a run resumed from a state
        saved then draws new prompts (the sampler has moved past the failed ones)."""
        if self._pending is None:
            return None
        wait([self._pending])
        return None if self._pending.exception() else self._pending.result().state_dict()

    def load_pending(self, state: dict | None) -> None:
        self._pending = None
        if state is not None:
            self._pending = Future()
            self._pending.set_result(Rollouts.from_state_dict(state))

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

    def _score(self, rows: list[Row], batch, training: bool):
        groups = batch["group_ids"].tolist()
        return self.rewards.score([rows[g].prompt for g in groups], self.decode(batch), [rows[g].answer for g in groups],
                                  [rows[g].extra for g in groups], count_towards_limit=training)

    def evaluate(self, evals: dict[str, list[Row]]) -> dict[str, float]:
        """Per eval set: greedy decoding through the rollout engine scored by the stage's reward
        (accuracy: the share given full credit, reward >= 1), and with `eval.pass_k` = k > 0 the
        share of prompts with at least one of k samples right (pass@k)."""
        if not evals:
            return {}
        t = time.perf_counter()
        k = self.cfg.eval.pass_k
        out, totals = {}, Counter()
        for name, rows in evals.items():
            greedy = Sampling(n=1, temperature=0.0, max_new_tokens=self.cfg.eval.max_new_tokens, stop=tuple(self.cfg.rl.stop))
            self.roles.prepare_rollout()
            scores = self._score(rows, self.roles.rollout.generate(self.prompt_ids(rows), greedy),
                                 False).rewards
            right = sum(s >= 1.0 for s in scores)
            out[f"eval/{name}/accuracy"] = right / len(rows)
            totals.update(right=right, reward=sum(scores), problems=len(rows))
            if k:
                sampled = Sampling(n=k, temperature=self.cfg.eval.pass_temperature, max_new_tokens=self.cfg.eval.max_new_tokens,
                                   stop=tuple(self.cfg.rl.stop), seed=random.Random(f"{self.cfg.seed}:eval").randrange(2**30))
                batch = self.roles.rollout.generate(self.prompt_ids(rows), sampled)
                hit = torch.tensor(self._score(rows, batch, False).rewards).view(len(rows), k).ge(1.0).any(-1)
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

    def _generate_and_score(self, rows: list[Row], group_offset: int, timing: dict[str, float], restart: bool):
        cfg = self.cfg
        self.draws += 1
        sampling = Sampling(n=cfg.rl.n, temperature=cfg.rl.temperature, max_new_tokens=cfg.rl.max_new_tokens,
                            top_p=cfg.rl.top_p, top_k=cfg.rl.top_k, stop=tuple(cfg.rl.stop),
                            seed_per_prompt=cfg.rollout.seed_per_prompt,
                            seed=random.Random(f"{cfg.seed}:{self.stream}{self.draws}").randrange(2**30))
        t = time.perf_counter()
        self.roles.prepare_rollout()
        batch = self.roles.rollout.generate(self.prompt_ids(rows), sampling, restart=restart)
        _add(timing, {"time/generate": time.perf_counter() - t, **self.roles.rollout.timing})
        t = time.perf_counter()
        scored = self._score(rows, batch, True)
        _add(timing, {"time/reward": time.perf_counter() - t})
        batch["scores"] = torch.tensor(scored.rewards, dtype=torch.float32)
        batch["reward_failed"] = torch.tensor(scored.failed)
        batch["group_ids"] = batch["group_ids"] + group_offset
        return batch, scored

    def _collect(self, sampler, version: int, restart: bool = True) -> Rollouts:
        """Generate and score `rl.prompts_per_step` groups. With dynamic sampling (DAPO), groups
        whose rewards are all equal teach nothing: they are dropped and new prompts drawn, for
        up to `algo.max_sampling_rounds` rounds; if still short, equal groups fill the batch.
        Touches the sampler, the reward manager and `draws`, never the step's other state: it may
        run on the prefetch thread (with `restart=False`, see `RolloutGroup.generate`)."""
        cfg, algo = self.cfg, self.cfg.algo
        want, n = cfg.rl.prompts_per_step, cfg.rl.n
        kept, fillers, named, errors, offset, timing = [], [], [], Counter(), 0, {}
        for rounds in range(1, (algo.max_sampling_rounds if algo.dynamic_sampling else 1) + 1):
            have = sum(b.batch_size[0] for b in kept) // n
            batch, scored = self._generate_and_score(sampler.next(want - have), offset, timing, restart)
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
        merged = {k: sum(d[k] for d in named if k in d) / sum(k in d for d in named) for d in named for k in d}
        return Rollouts(batch, merged, dict(errors), rounds, timing, version)

    def rl_step(self, sampler, train_actor: bool = True, prefetch: bool = False) -> dict[str, float]:
        """One RL step. With `train_actor=False` (critic pre-training) only the critic learns
        from the batch; the policy, and so the rollout weights, stay as they are. With `prefetch`
        (rl.off_policy_steps=1 and a step follows), the next step's rollouts generate on the
        current weights while this step trains; the push waits for them."""
        cfg, algo, timing = self.cfg, self.cfg.algo, {}
        t0 = t = time.perf_counter()

        if self._pending is not None:
            got, self._pending = self._pending.result(), None  # raises what its generation raised
        else:
            got = self._collect(sampler, self.version)
        if prefetch:
            self._pending = _in_background(self._collect, sampler, self.version, False)
        batch, named, errors, rounds, self.timing = got.batch, got.named, got.errors, got.rounds, got.timing
        lag = self.version - got.version
        mask = batch["response_mask"]
        scores_t, lengths = batch["scores"].clone(), mask.sum(-1)
        if algo.overlong_buffer:
            # DAPO's soft overlong penalty: 0 until the buffer starts, then down to -1 at the limit.
            start = cfg.rl.max_new_tokens - algo.overlong_buffer
            batch["scores"] = batch["scores"] + ((start - lengths) / algo.overlong_buffer).clamp(-1, 0)
        failed = batch["reward_failed"]
        if cfg.reward.on_error == "drop_group" and failed.any():
            dropped = torch.isin(batch["group_ids"], batch["group_ids"][failed])
            batch["response_mask"] = batch["response_mask"] * (~dropped).float()[:, None]
        if algo.overlong_filter:
            batch["response_mask"] = batch["response_mask"] * (~batch["truncated"]).float()[:, None]
        timing["time/rollout"], t = time.perf_counter() - t, time.perf_counter()
        self.roles.prepare_training()

        # One update per batch and no reference: the training forward gives the old log-probs
        # (masked importance sampling needs them before the update, so it takes the extra forward).
        on_policy = (train_actor and algo.epochs * algo.mini_batches == 1 and self.roles.ref is None
                     and algo.rollout_correction != "mis")
        if not on_policy:
            batch["old_logprobs"] = torch.cat(self.roles.actor.dp("logprobs", batch))
        kl, correction = None, {}
        if self.roles.ref is not None:
            batch["ref_logprobs"] = torch.cat(self.roles.ref.dp("logprobs", batch))
            kl = kl_estimate(batch["old_logprobs"], batch["ref_logprobs"], algo.kl_estimator, algo.log_ratio_clamp)
            kl, bites = clamp_kl(kl, algo.kl_clamp)
            kl = kl * batch["response_mask"]
            correction["actor/kl_rollout_batch_clamp_frac"] = float(
                (bites * batch["response_mask"]).sum() / batch["response_mask"].sum().clamp(min=1))
        if self.roles.critic is not None:
            batch["values"] = torch.cat(self.roles.critic.dp("values", batch))
        timing["time/logprobs"], t = time.perf_counter() - t, time.perf_counter()

        response_mask = batch["response_mask"]  # before masked importance sampling drops any sequence
        if algo.rollout_correction == "mis":
            keep = mis_keep(batch["old_logprobs"], batch["rollout_logprobs"], response_mask, algo.mis_low, algo.mis_high)
            has = response_mask.sum(-1) > 0
            correction["rollout/mis_masked_frac"] = float((has & ~keep).sum() / has.sum().clamp(min=1))
            batch["response_mask"] = response_mask * keep.float()[:, None]

        mask = batch["response_mask"]
        adv, returns = adv_lib.compute(
            algo.adv_estimator, scores=batch["scores"], group_ids=batch["group_ids"], mask=mask,
            values=batch.get("values", None), kl=kl if algo.kl_mode == "reward" else None, kl_coef=self.kl.coef,
            gamma=algo.gamma, lam=algo.lam, norm_by_std=algo.norm_by_std,
        )
        batch["advantages"] = adv * mask
        if returns is not None:
            batch["returns"] = returns
        policy_loss = PolicyLoss(
            kind=algo.policy_loss, clip_low=algo.clip_low, clip_high=algo.clip_high, aggregation=algo.loss_agg,
            dual_clip=algo.dual_clip, kl_coef=self.kl.coef if (kl is not None and algo.kl_mode == "loss") else 0.0,
            kl_estimator=algo.kl_estimator, entropy_coef=algo.entropy_coef, on_policy=on_policy,
            log_ratio_clamp=algo.log_ratio_clamp, seq_log_ratio_clamp=algo.seq_log_ratio_clamp, kl_clamp=algo.kl_clamp,
            tis_cap=algo.tis_cap if algo.rollout_correction == "tis" else None,
        )
        updates: list[dict] = []
        actor_seconds = 0.0  # the actor's share of the train phase (a critic trains in it too)
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
        if on_policy:
            batch["old_logprobs"] = torch.cat(self.roles.actor.per_dp("last_logprobs"))
        correction.update(mismatch_metrics(batch["rollout_logprobs"], batch["old_logprobs"], response_mask))
        if algo.rollout_correction == "tis":
            _, truncated = tis_weights(batch["old_logprobs"], batch["rollout_logprobs"], mask, algo.tis_cap)
            correction["rollout/tis_truncated_frac"] = float(truncated.sum() / mask.sum().clamp(min=1))
        train["train/skipped_updates"] = float(self.count_skips(updates))
        train["train/skipped_updates_total"] = float(self.skipped)
        timing["time/train"] = time.perf_counter() - t

        if kl is not None:
            measured = float(kl.sum() / mask.sum().clamp(min=1))
            train["actor/kl_coef"] = self.kl.coef
            train["actor/kl_rollout_batch"] = measured
            self.kl.update(measured, batch.batch_size[0])
        push = train_actor
        if self._pending is not None:  # vLLM must not take new weights mid-generation
            t = time.perf_counter()
            wait([self._pending])
            timing["time/rollout_wait"] = time.perf_counter() - t
            # A failed prefetch is raised by the next step, which saves this step's state (a resumed
            # run pushes the weights); pushing now could wait forever on a hung engine.
            push = push and self._pending.exception() is None
        if push:
            self.version += 1
        try:
            timing.update(self.sync_weights() if push else {"time/push": 0.0})
        except RolloutFailed as e:
            e.after_update = True  # this step's update is done: a run can continue after it, not before
            raise
        timing["time/step"] = time.perf_counter() - t0
        metrics = {**self._rollout_metrics(batch, scores_t, lengths), **correction, **named, **train, **self.timing,
                   **timing}
        metrics.update({f"reward/errors/{k}": float(v) for k, v in errors.items()})
        metrics["reward/failed_frac"] = float(failed.float().mean())
        metrics["rollout/sampling_rounds"] = float(rounds)
        metrics["rollout/policy_lag"] = float(lag)  # policy updates between the sampling weights and the trainer's
        metrics["rollout/restarts_total"] = float(self.roles.rollout.restarts)
        metrics["actor/updated"] = float(train_actor)
        # Tokens per second: sampled by the rollout engine (generation only), and passed through
        # the trainer (prompt and response, every epoch).
        metrics["throughput/generated_tokens_per_s"] = float(lengths.sum()) / max(self.timing["time/generate"], 1e-9)
        metrics["throughput/trained_tokens_per_s"] = (
            float(batch["attention_mask"].sum()) * algo.epochs / max(timing["time/train"], 1e-9) if train_actor else 0.0)
        if train_actor:
            metrics.update(self._device_metrics(float(batch["attention_mask"].sum()) * algo.epochs,
                                                float(batch["attention_mask"].sum(-1).float().mean()), actor_seconds))
        self.last_batch = batch
        if self.roles.critic is not None:
            # values from before this step's update: how well the critic predicted returns it had not seen
            metrics["critic/explained_var"] = explained_variance(batch["returns"], batch["values"], mask)
        return metrics

    def _device_metrics(self, tokens: float, context: float, seconds: float) -> dict[str, float]:
        """On GPU: each trainer role's peak memory over the step, and the actor's MFU in training."""
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

    def _rollout_metrics(self, batch, scores: torch.Tensor, lengths: torch.Tensor) -> dict[str, float]:
        mask = batch["response_mask"]
        grouped = scores.view(-1, self.cfg.rl.n)
        # Rollout engine vs trainer on the same tokens: kernels and precision differ; watch it.
        diff = (batch["rollout_logprobs"] - batch["old_logprobs"]) * mask
        out = {
            "reward/mean": float(scores.mean()),
            "reward/std": float(scores.std()) if scores.numel() > 1 else 0.0,
            "reward/groups_with_signal": float((grouped.std(-1) > 0).float().mean()) if self.cfg.rl.n > 1 else 0.0,
            "reward/between_prompt_var_share": between_group_share(scores, batch["group_ids"]),
            "response/length_mean": float(lengths.float().mean()),
            "response/truncated_frac": float(batch["truncated"].float().mean()),
            "rollout/logprob_abs_diff_mean": float(diff.abs().sum() / mask.sum().clamp(min=1)),
            "rollout/logprob_abs_diff_max": float(diff.abs().max()),
            # mean -log p of the sampled tokens under the trainer's policy: its entropy per token,
            # estimated from the samples (exact in expectation at rl.temperature=1)
            "actor/entropy_estimate": float(-(batch["old_logprobs"] * mask).sum() / mask.sum().clamp(min=1)),
        }
        return out
