"""The single controller: one SFT step, one RL step, evaluation and the weight push, as calls
on the role workers. It holds no model; the algorithm math runs here on small tensors."""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray
import torch

from rlhf.algos import advantages as adv_lib
from rlhf.algos.losses import PPOClipLoss, SFTLoss
from rlhf.batch import pack
from rlhf.config import RunConfig
from rlhf.data.arithmetic import Problem
from rlhf.worker_group import TrainerGroup
from rewards.manager import RewardManager
from rollout.base import Sampling


@dataclass
class Roles:
    actor: TrainerGroup
    rollout: "ray.actor.ActorHandle"
    ref: TrainerGroup | None


def _responses(batch) -> list[list[int]]:
    mask = batch["response_mask"].bool()
    return [row[m].tolist() for row, m in zip(batch["input_ids"], mask)]


class Controller:
    def __init__(self, cfg: RunConfig, roles: Roles, tokenizer, rewards: RewardManager):
        self.cfg, self.roles, self.tok, self.rewards = cfg, roles, tokenizer, rewards
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        algo = cfg.algo
        self.policy_loss = PPOClipLoss(algo.clip_low, algo.clip_high, algo.kl_coef, algo.kl_estimator)

    def prompt_ids(self, problems: list[Problem]) -> list[list[int]]:
        return [self.tok(p.prompt).input_ids for p in problems]

    def decode(self, batch) -> list[str]:
        return self.tok.batch_decode(_responses(batch), skip_special_tokens=True)

    def push_weights(self) -> float:
        t = time.perf_counter()
        per_rank = self.roles.actor.all("export_buckets", self.cfg.rollout.bucket_bytes)
        ray.get(self.roles.rollout.update_weights.remote(per_rank[0]))
        return time.perf_counter() - t

    def evaluate(self, problems: list[Problem]) -> dict[str, float]:
        """Greedy decoding through the rollout engine, scored by the run's reward function."""
        t = time.perf_counter()
        sampling = Sampling(n=1, temperature=0.0, max_new_tokens=self.cfg.eval.max_new_tokens)
        batch = ray.get(self.roles.rollout.generate.remote(self.prompt_ids(problems), sampling))
        texts = self.decode(batch)
        scores = self.rewards.score(
            [p.prompt for p in problems], texts, [p.answer for p in problems], count_towards_limit=False
        ).rewards
        return {
            # share of problems given full credit (reward >= 1: exactly right, for 0/1 rewards)
            "eval/accuracy": sum(s >= 1.0 for s in scores) / len(scores),
            "eval/reward": sum(scores) / len(scores),
            "eval/num_problems": len(problems),
            "time/eval": time.perf_counter() - t,
        }

    def sft_step(self, problems: list[Problem]) -> dict[str, float]:
        t = time.perf_counter()
        answers = [self.tok(p.demo, add_special_tokens=False).input_ids + [self.eos] for p in problems]
        batch = pack(self.prompt_ids(problems), answers, self.pad)
        tokens = float(batch["response_mask"].sum())
        metrics = self.roles.actor.dp("train_step", batch, SFTLoss(), tokens)[0]
        metrics["sft/loss"] = metrics.pop("loss")
        metrics["time/step"] = time.perf_counter() - t
        return metrics

    def rl_step(self, problems: list[Problem]) -> dict[str, float]:
        cfg, timing = self.cfg, {}
        t0 = t = time.perf_counter()

        sampling = Sampling(n=cfg.rl.n, temperature=cfg.rl.temperature, max_new_tokens=cfg.rl.max_new_tokens)
        batch = ray.get(self.roles.rollout.generate.remote(self.prompt_ids(problems), sampling))
        timing["time/generate"], t = time.perf_counter() - t, time.perf_counter()

        groups = batch["group_ids"].tolist()
        texts = self.decode(batch)
        scored = self.rewards.score([problems[g].prompt for g in groups], texts, [problems[g].answer for g in groups])
        scores_t = torch.tensor(scored.rewards, dtype=torch.float32)
        batch["scores"] = scores_t
        failed = torch.tensor(scored.failed)
        if self.cfg.reward.on_error == "drop_group" and failed.any():
            dropped = torch.isin(batch["group_ids"], batch["group_ids"][failed])
            batch["response_mask"] = batch["response_mask"] * (~dropped).float()[:, None]
        timing["time/reward"], t = time.perf_counter() - t, time.perf_counter()

        batch["old_logprobs"] = torch.cat(self.roles.actor.dp("logprobs", batch))
        if self.roles.ref is not None:
            batch["ref_logprobs"] = torch.cat(self.roles.ref.dp("logprobs", batch))
        timing["time/logprobs"], t = time.perf_counter() - t, time.perf_counter()

        per_sample = adv_lib.grpo(scores_t, batch["group_ids"], norm_by_std=cfg.algo.norm_by_std)
        batch["advantages"] = adv_lib.broadcast_to_tokens(per_sample, batch["response_mask"])
        tokens = float(batch["response_mask"].sum())
        if tokens == 0:
            raise RuntimeError("no response tokens left to train on (all groups dropped or empty responses)")
        for _ in range(cfg.algo.epochs):
            train = self.roles.actor.dp("train_step", batch, self.policy_loss, tokens)[0]
        timing["time/train"] = time.perf_counter() - t

        timing["time/push"] = self.push_weights()
        timing["time/step"] = time.perf_counter() - t0
        errors = {f"reward/errors/{k}": float(v) for k, v in scored.errors.items()}
        errors["reward/failed_frac"] = float(failed.float().mean())
        return {**self._rollout_metrics(batch, scores_t), **scored.named, **errors, **train, **timing}

    def _rollout_metrics(self, batch, scores: torch.Tensor) -> dict[str, float]:
        mask = batch["response_mask"]
        lengths = mask.sum(-1)
        grouped = scores.view(-1, self.cfg.rl.n)
        # Rollout engine vs trainer on the same tokens: kernels and precision differ; watch it.
        diff = (batch["rollout_logprobs"] - batch["old_logprobs"]) * mask
        out = {
            "reward/mean": float(scores.mean()),
            "reward/std": float(scores.std()) if scores.numel() > 1 else 0.0,
            "reward/groups_with_signal": float((grouped.std(-1) > 0).float().mean()) if self.cfg.rl.n > 1 else 0.0,
            "response/length_mean": float(lengths.float().mean()),
            "response/truncated_frac": float(batch["truncated"].float().mean()),
            "rollout/logprob_abs_diff_mean": float(diff.abs().sum() / mask.sum()),
            "rollout/logprob_abs_diff_max": float(diff.abs().max()),
        }
        if "ref_logprobs" in batch.keys():
            out["actor/ref_logprob_diff_mean"] = float(((batch["old_logprobs"] - batch["ref_logprobs"]) * mask).sum() / mask.sum())
        return out
