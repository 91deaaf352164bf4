"""Losses, as picklable callables the training engine runs on each micro-batch.

Contract: `loss_fn(out, batch) -> (loss_sum, stats_sums)`. `out` holds what the engine computed
for the micro-batch: `logprobs` [B, T], and `entropy` [B, T] or `values` [B, T] when the loss
lists them in `needs`. `loss_sum` is a sum over the micro-batch's tokens of per-token losses
times aggregation weights (`token_weights`); the engine divides it (and every stat) by the
normaliser the driver computed for the whole mini-batch (`normaliser`). Splitting a batch into
micro-batches or data-parallel ranks therefore never changes the loss or its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict

from rlhf.algos.kl import kl_estimate

AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def token_weights(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-token weights such that sum(weights * loss) / normaliser is the chosen aggregate."""
    if mode in ("token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        return mask
    if mode == "seq-mean-token-mean":
        return mask / mask.sum(-1, keepdim=True).clamp(min=1)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(AGGREGATIONS)}")


def normaliser(mask: torch.Tensor, mode: str, max_response_len: int) -> float:
    """The global divisor, computed by the driver over the whole (mini-)batch.

    token-mean: number of response tokens; seq-mean-*: number of sequences with a response;
    seq-mean-token-sum-norm (Dr.GRPO): number of sequences times a constant, the maximum
    response length, so no sample's tokens weigh more for being in a short response.
    """
    if mode == "token-mean":
        return float(mask.sum())
    if mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        return float((mask.sum(-1) > 0).sum())
    if mode == "seq-mean-token-sum-norm":
        return float(mask.shape[0] * max_response_len)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(AGGREGATIONS)}")


@dataclass(frozen=True)
class SFTLoss:
    """Negative log-likelihood of the response tokens (token-mean)."""

    needs = frozenset({"logprobs"})

    def __call__(self, out: dict, batch: TensorDict):
        return -(out["logprobs"] * batch["response_mask"]).sum(), {}


@dataclass(frozen=True)
class PolicyLoss:
    """PPO's clipped surrogate with separate low/high clip (DAPO's clip-higher) and an optional
    dual clip, or GSPO's sequence-level ratio; plus KL to the reference and an entropy bonus.

    `kind`: "ppo_clip" or "gspo". For GSPO the ratio is exp(mean log-ratio over the sequence),
    clipped per sequence, and each sequence's loss is spread evenly over its tokens (so
    seq-mean-token-sum aggregation gives the paper's mean over sequences).
    """

    kind: str
    clip_low: float
    clip_high: float
    aggregation: str = "token-mean"
    dual_clip: float | None = None
    kl_coef: float = 0.0  # > 0: KL to the reference as a loss term (kl_mode: loss)
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    # One update per rollout batch: the policy before the update is the one computing this
    # forward, so the old log-probs are this forward's, detached (no extra forward pass).
    on_policy: bool = False

    @property
    def needs(self):
        return frozenset({"logprobs", "entropy"} if self.entropy_coef else {"logprobs"})

    def __call__(self, out: dict, batch: TensorDict):
        mask = batch["response_mask"]
        logprobs = out["logprobs"]
        adv = batch["advantages"]
        old = logprobs.detach() if self.on_policy else batch["old_logprobs"]
        log_ratio = (logprobs - old) * mask
        if self.kind == "gspo":
            lengths = mask.sum(-1, keepdim=True).clamp(min=1)
            seq_log_ratio = log_ratio.sum(-1, keepdim=True) / lengths
            # token-wise form of GSPO: value of the sequence ratio, gradient through each token
            ratio = torch.exp(seq_log_ratio.detach() + log_ratio - log_ratio.detach())
            ratio_value = torch.exp(seq_log_ratio).expand_as(mask)
        elif self.kind == "ppo_clip":
            ratio = torch.exp(log_ratio)
            ratio_value = ratio
        else:
            raise ValueError(f"unknown policy loss {self.kind!r}")
        clipped_ratio = ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high)
        unclipped = -adv * ratio
        clipped = -adv * clipped_ratio
        per_token = torch.maximum(unclipped, clipped)
        if self.dual_clip is not None:
            per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * self.dual_clip), per_token)
        if self.kind == "gspo":
            per_token = per_token / mask.sum(-1, keepdim=True).clamp(min=1)
        weights = token_weights(mask, self.aggregation)
        stats = {
            "actor/pg_loss": (per_token * weights).sum().detach(),
            "actor/clip_frac": ((clipped > unclipped).float() * weights).sum().detach(),
            "actor/ratio_mean": (ratio_value.detach() * weights).sum(),
        }
        loss = per_token
        if self.kl_coef:
            kl = kl_estimate(logprobs, batch["ref_logprobs"], self.kl_estimator)
            stats["actor/kl_ref"] = (kl * weights).sum().detach()
            loss = loss + self.kl_coef * kl
        if self.entropy_coef:
            stats["actor/entropy"] = (out["entropy"] * weights).sum().detach()
            loss = loss - self.entropy_coef * out["entropy"]
        return (loss * weights).sum(), stats


@dataclass(frozen=True)
class ValueLoss:
    """The critic's clipped value loss: 0.5 * max((V - R)^2, (V_old + clip(V - V_old) - R)^2),
    token-mean over response tokens."""

    clip: float | None
    needs = frozenset({"values"})

    def __call__(self, out: dict, batch: TensorDict):
        mask = batch["response_mask"]
        values, returns, old = out["values"], batch["returns"], batch["values"]
        loss = (values - returns) ** 2
        if self.clip is not None:
            clipped = old + (values - old).clamp(-self.clip, self.clip)
            loss = torch.maximum(loss, (clipped - returns) ** 2)
            stats = {"critic/clip_frac": (((values - old).abs() > self.clip).float() * mask).sum().detach()}
        else:
            stats = {}
        return 0.5 * (loss * mask).sum(), stats
