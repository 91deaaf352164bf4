"""Losses, as picklable callables the training engine runs on each micro-batch.

Contract: `loss_fn(out, batch) -> (loss_sum, stats_sums)`, and
`loss_fn.reduce(summed_stats, normaliser) -> metrics`. `out` holds what the engine computed
for the micro-batch: `logprobs` [B, T], and `entropy` [B, T] or `values` [B, T] when the loss
lists them in `needs`. `loss_sum` is a sum over the micro-batch's tokens of per-token losses
times aggregation weights (`token_weights`); the engine divides it by the normaliser the
driver computed for the whole mini-batch (`normaliser`), and hands the stats, summed over
micro-batches and ranks, to `reduce` (which divides each by the normaliser or, for token
means, by the summed token count). Splitting a batch into micro-batches or data-parallel ranks
therefore never changes the loss, its gradient or its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict

from rlhf.algos import AGGREGATIONS
from rlhf.algos.kl import clamp_kl, kl_estimate
from rlhf.algos.rollout_correction import decoupled_weights, tis_weights


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


class Loss:
    """What every loss shares: how its summed stats become metrics."""

    needs: frozenset

    def reduce(self, sums: dict[str, float], normaliser: float) -> dict[str, float]:
        """Turn stats summed over all micro-batches and ranks into metrics. By default each is
        divided by the normaliser, like the loss."""
        return {k: v / max(normaliser, 1e-12) for k, v in sums.items()}


@dataclass(frozen=True)
class SFTLoss(Loss):
    """Negative log-likelihood of the response tokens (token-mean)."""

    needs = frozenset({"logprobs"})

    def __call__(self, out: dict, batch: TensorDict):
        return -(out["logprobs"] * batch["response_mask"]).sum(), {}


# Stats of PolicyLoss that are means over response tokens under every aggregation (their sums
# are divided by the token count `tokens`, not by the loss normaliser).
TOKEN_STATS = ("actor/clip_frac", "actor/ratio_mean", "actor/log_ratio_clamp_frac",
               "actor/seq_log_ratio_clamp_frac", "actor/kl_clamp_frac")


@dataclass(frozen=True)
class PolicyLoss(Loss):
    """PPO's clipped surrogate with separate low/high clip (DAPO's clip-higher) and an optional
    dual clip, or GSPO's sequence-level ratio; plus KL to the reference and an entropy bonus.

    `kind`: "ppo_clip" or "gspo". For GSPO the ratio is exp(mean log-ratio over the sequence),
    clipped per sequence; every token of a sequence carries the sequence's loss (its gradient
    flows through each token's log-prob), so `seq-mean-token-mean` aggregation gives the
    paper's mean over sequences and `token-mean` weighs sequences by length.

    Clamps (None: off): `log_ratio_clamp` bounds each token's log(pi / pi_old), and the
    log-ratio inside the KL estimate, to [-c, c] before exp; `seq_log_ratio_clamp` bounds GSPO's
    sequence log-ratio from above; `kl_clamp` bounds each token's KL estimate to [-c, c]. No
    gradient flows where a clamp bites; `actor/*_clamp_frac` counts the share of tokens.
    `tis_cap`: token-level truncated importance sampling against the rollout engine's log-probs
    (see rlhf.algos.rollout_correction).

    Stats: `actor/pg_loss`, `actor/kl_ref`, `actor/entropy` are aggregated like the loss;
    `actor/clip_frac` (share of response tokens where the clipped term is the larger, i.e. the
    clip is active) and `actor/ratio_mean` are token means under every aggregation.
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
    log_ratio_clamp: float | None = None
    seq_log_ratio_clamp: float | None = None
    kl_clamp: float | None = None
    tis_cap: float | None = None
    # decoupled PPO: weight each token by proximal / behaviour (batch["policy_lag"] > 0 only), those
    # above this cap leave the loss (see rlhf.algos.rollout_correction)
    decoupled_cap: float | None = None

    @property
    def needs(self):
        return frozenset({"logprobs", "entropy"} if self.entropy_coef else {"logprobs"})

    def __call__(self, out: dict, batch: TensorDict):
        mask = batch["response_mask"]
        logprobs = out["logprobs"]
        adv = batch["advantages"]
        old = logprobs.detach() if self.on_policy else batch["old_logprobs"]
        log_ratio = (logprobs - old) * mask
        stats = {"tokens": mask.sum()}
        if self.kind == "gspo":
            lengths = mask.sum(-1, keepdim=True).clamp(min=1)
            seq_log_ratio = (log_ratio.sum(-1, keepdim=True) / lengths).expand_as(mask)
            # token-wise form of GSPO: value of the sequence ratio, gradient through each token
            log_ratio = seq_log_ratio.detach() + log_ratio - log_ratio.detach()
            if self.seq_log_ratio_clamp is not None:
                bites = (seq_log_ratio.detach() > self.seq_log_ratio_clamp).float()
                stats["actor/seq_log_ratio_clamp_frac"] = (bites * mask).sum()
                log_ratio = log_ratio.clamp(max=self.seq_log_ratio_clamp)
        elif self.kind == "ppo_clip":
            if self.log_ratio_clamp is not None:
                bites = (log_ratio.detach().abs() > self.log_ratio_clamp).float()
                stats["actor/log_ratio_clamp_frac"] = (bites * mask).sum()
                log_ratio = log_ratio.clamp(-self.log_ratio_clamp, self.log_ratio_clamp)
        else:
            raise ValueError(f"unknown policy loss {self.kind!r}")
        ratio = torch.exp(log_ratio)
        clipped_ratio = ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high)
        unclipped = -adv * ratio
        clipped = -adv * clipped_ratio
        per_token = torch.maximum(unclipped, clipped)
        if self.dual_clip is not None:
            per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * self.dual_clip), per_token)
        if self.tis_cap is not None:
            is_weights, _ = tis_weights(old, batch["rollout_logprobs"], mask, self.tis_cap)
            per_token = per_token * is_weights
        if self.decoupled_cap is not None:
            is_weights, _ = decoupled_weights(old, batch["rollout_logprobs"], batch["policy_lag"], mask,
                                              self.decoupled_cap)
            per_token = per_token * is_weights
        weights = token_weights(mask, self.aggregation)
        stats["actor/pg_loss"] = (per_token * weights).sum().detach()
        stats["actor/clip_frac"] = ((clipped > unclipped).float() * mask).sum().detach()
        stats["actor/ratio_mean"] = (ratio.detach() * mask).sum()
        loss = per_token
        if self.kl_coef:
            kl = kl_estimate(logprobs, batch["ref_logprobs"], self.kl_estimator, self.log_ratio_clamp)
            kl, bites = clamp_kl(kl, self.kl_clamp)
            stats["actor/kl_ref"] = (kl * weights).sum().detach()
            if self.kl_clamp is not None:
                stats["actor/kl_clamp_frac"] = (bites * mask).sum()
            loss = loss + self.kl_coef * kl
        if self.entropy_coef:
            stats["actor/entropy"] = (out["entropy"] * weights).sum().detach()
            loss = loss - self.entropy_coef * out["entropy"]
        return (loss * weights).sum(), stats

    def reduce(self, sums: dict[str, float], normaliser: float) -> dict[str, float]:
        sums = dict(sums)
        tokens = max(sums.pop("tokens"), 1.0)
        return {k: v / tokens if k in TOKEN_STATS else v / max(normaliser, 1e-12) for k, v in sums.items()}


@dataclass(frozen=True)
class ValueLoss(Loss):
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
