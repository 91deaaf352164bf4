"""Rollout-vs-trainer mismatch: how far the rollout engine's log-probs (`rollout_logprobs`) are
from the trainer's for the same tokens (`old_logprobs`), and two corrections for it.

The samples come from the rollout engine's distribution, not the trainer's: kernels, precision
and sampling transforms differ. PPO's ratio is taken against the trainer's old policy, so the
gap biases the gradient unless it is corrected (Liu, Li et al. 2025, "When Speed Kills
Stability"; verl's rollout correction and TRL's vLLM importance-sampling correction):

- tis: token-level truncated importance sampling. Each token's policy-gradient term is
  multiplied by w = min(exp(old - rollout), cap), a constant (no gradient).
- mis: sequence-level masked importance sampling. A sequence whose ratio
  exp(sum over its tokens of (old - rollout)) lies outside [low, high] leaves the loss
  (it leaves `response_mask`, so the loss normaliser does not count it either).
- decoupled: decoupled PPO for off-policy samples (Hilton et al. 2022; AReaL's objective). The
  rollout engine's log-probs are the behaviour policy's (each token's, whatever policy version
  sampled it), the trainer's at the step's start the proximal policy's; PPO clips the ratio to
  the proximal policy, and each token's term is weighted by w = exp(old - rollout), the
  proximal-over-behaviour importance weight. Tokens with w above the cap leave the loss (as
  AReaL's `behav_imp_weight_cap`). Tokens sampled by the current policy (lag 0) get w = 1, so
  with on-policy samples the loss is PPO's exactly.
"""

from __future__ import annotations

import math

import torch

# Log-ratios are bounded before exp so no weight is inf (exp(20) is about 5e8).
_LOG_BOUND = 20.0


def mismatch_metrics(rollout_logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Over the response tokens: mean KL(rollout || trainer) by the k1 and k3 estimators (the
    samples are the rollout's), and the largest and smallest token ratio trainer / rollout."""
    m = mask.bool()
    if not m.any():
        return {"rollout/mismatch_kl_k1": 0.0, "rollout/mismatch_kl_k3": 0.0,
                "rollout/mismatch_ratio_max": 1.0, "rollout/mismatch_ratio_min": 1.0}
    log_ratio = (old_logprobs - rollout_logprobs)[m].double()  # log(trainer / rollout)
    return {
        "rollout/mismatch_kl_k1": float((-log_ratio).mean()),
        "rollout/mismatch_kl_k3": float((log_ratio.exp() - 1 - log_ratio).mean()),
        "rollout/mismatch_ratio_max": float(log_ratio.max().exp()),
        "rollout/mismatch_ratio_min": float(log_ratio.min().exp()),
    }


def tis_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor,
                cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Token weights min(exp(old - rollout), cap) on response tokens (0 elsewhere), detached,
    and a 0/1 tensor marking the tokens whose weight was truncated at `cap`."""
    log_ratio = (old_logprobs - rollout_logprobs).detach().clamp(-_LOG_BOUND, _LOG_BOUND)
    truncated = (log_ratio > math.log(cap)).float() * mask
    return log_ratio.exp().clamp(max=cap) * mask, truncated


def mis_keep(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor,
             low: float, high: float) -> torch.Tensor:
    """[B] bool: True for sequences whose ratio exp(sum(old - rollout)) lies in [low, high]
    (compared in log space, so long sequences cannot overflow). Empty responses are kept."""
    seq_log_ratio = ((old_logprobs - rollout_logprobs) * mask).sum(-1)
    return (seq_log_ratio >= math.log(low)) & (seq_log_ratio <= math.log(high))


def decoupled_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, lag: torch.Tensor,
                      mask: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Token weights of decoupled PPO, detached: exp(old - rollout) on response tokens sampled by
    an older policy (`lag` > 0), 1 on those the current one sampled, 0 where the weight exceeds
    `cap` (and off the response); and a 0/1 tensor marking the capped tokens."""
    log_ratio = (old_logprobs - rollout_logprobs).detach().clamp(-_LOG_BOUND, _LOG_BOUND)
    weights = torch.where(lag > 0, log_ratio.exp(), torch.ones_like(log_ratio))
    capped = (weights > cap).float() * mask
    return weights * mask * (1 - capped), capped
