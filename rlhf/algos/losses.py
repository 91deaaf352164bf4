"""Losses, as picklable callables the training engine runs on each micro-batch.

Contract: `loss_fn(logprobs, batch) -> (loss_sum, stats_sums)`, where `loss_sum` is the sum of
per-token losses over `batch["response_mask"]` and each stat is likewise a sum over tokens.
The engine divides both by the number of response tokens in the whole global batch, so the
result (token-mean) does not depend on how the batch was split into micro-batches or ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict

from rlhf.algos.kl import kl_estimate


@dataclass(frozen=True)
class SFTLoss:
    """Negative log-likelihood of the response tokens."""

    def __call__(self, logprobs: torch.Tensor, batch: TensorDict):
        mask = batch["response_mask"]
        return -(logprobs * mask).sum(), {}


@dataclass(frozen=True)
class PPOClipLoss:
    """PPO's clipped surrogate with separate low/high clip, plus an optional KL-to-reference term."""

    clip_low: float
    clip_high: float
    kl_coef: float = 0.0
    kl_estimator: str = "k3"

    def __call__(self, logprobs: torch.Tensor, batch: TensorDict):
        mask = batch["response_mask"]
        adv = batch["advantages"]
        log_ratio = (logprobs - batch["old_logprobs"]) * mask
        ratio = torch.exp(log_ratio)
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high)
        per_token = torch.maximum(unclipped, clipped)
        stats = {
            "actor/clip_frac": ((clipped > unclipped).float() * mask).sum().detach(),
            "actor/pg_loss": (per_token * mask).sum().detach(),
        }
        if self.kl_coef > 0:
            kl = kl_estimate(logprobs, batch["ref_logprobs"], self.kl_estimator)
            stats["actor/kl_ref"] = (kl * mask).sum().detach()
            per_token = per_token + self.kl_coef * kl
        return (per_token * mask).sum(), stats
