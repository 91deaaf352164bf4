"""Advantage estimators: pure functions on tensors, run by the driver.

Layout (see core/batch.py): per-sample scores [B], token tensors [B, T] with `mask` marking the
response tokens. Outcome estimators give one advantage per sample, broadcast over its tokens;
GAE and REINFORCE++ work on token-level rewards.
"""

from __future__ import annotations

import torch


def group_stats(scores: torch.Tensor, group_ids: torch.Tensor):
    """Per-sample group mean, unbiased group std and group size."""
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts)).index_add_(0, inverse, scores)
    means = sums / counts
    sq = torch.zeros(len(counts)).index_add_(0, inverse, (scores - means[inverse]) ** 2)
    std = torch.sqrt(sq / (counts - 1).clamp(min=1))
    return means[inverse], std[inverse], counts[inverse].float()


def grpo(scores: torch.Tensor, group_ids: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: (r - group mean) / (group std + eps), std unbiased as in the paper and TRL. Without
    std division this is Dr.GRPO's advantage. A group of equal rewards gets 0."""
    scores = scores.float()
    mean, std, _ = group_stats(scores, group_ids)
    adv = scores - mean
    return adv / (std + eps) if norm_by_std else adv


def rloo(scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO: r_i minus the mean of the other samples of its prompt (leave-one-out baseline)."""
    scores = scores.float()
    mean, _, n = group_stats(scores, group_ids)
    if (n < 2).any():
        raise ValueError("RLOO needs at least 2 samples per prompt (rl.n >= 2)")
    return (scores - mean) * n / (n - 1)


def broadcast_to_tokens(per_sample: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Outcome advantages: every response token of a sample carries the sample's advantage."""
    return per_sample[:, None] * response_mask


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, kl_coef: float = 0.0):
    """Token-level rewards: the score on the last response token, minus kl_coef * KL on every
    response token when the KL penalty goes into the reward."""
    rewards = torch.zeros_like(mask, dtype=torch.float32)
    lengths = mask.sum(-1)
    has = lengths > 0
    last = (mask * torch.arange(mask.shape[1])).argmax(-1)
    rewards[has, last[has]] = scores.float()[has]
    if kl is not None and kl_coef:
        rewards = rewards - kl_coef * kl * mask
    return rewards


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{k >= t} gamma^(k-t) r_k over response tokens (padding and prompt skipped)."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        running = torch.where(m > 0, rewards[:, t] + gamma * running, running)
        returns[:, t] = running * m
    return returns


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over the response tokens of each row.

    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, with V = 0 after the
    last response token. Returns (advantages, returns = advantages + values), both masked.
    """
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(rewards.shape[0])
    next_adv = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_adv = torch.where(m > 0, a, next_adv)
    return adv, (adv + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise over all masked entries of the batch to mean 0, std 1."""
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (x - mean) / torch.sqrt(var + eps) * mask


def reinforce_pp(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """REINFORCE++: discounted returns of the token rewards, whitened over the whole batch."""
    return whiten(discounted_returns(rewards, mask, gamma), mask)


def compute(estimator: str, *, scores, group_ids, mask, values=None, kl=None, kl_coef=0.0, gamma=1.0, lam=1.0,
            norm_by_std=True):
    """Dispatch by `algo.adv_estimator`; returns (token advantages, token returns or None)."""
    if estimator in ("grpo", "rloo"):
        per_sample = grpo(scores, group_ids, norm_by_std) if estimator == "grpo" else rloo(scores, group_ids)
        return broadcast_to_tokens(per_sample, mask), None
    if estimator == "reinforce_pp_baseline":
        scores = scores.float() - group_stats(scores.float(), group_ids)[0]
        estimator = "reinforce_pp"
    rewards = token_rewards(scores, mask, kl, kl_coef)
    if estimator == "reinforce_pp":
        return reinforce_pp(rewards, mask, gamma), None
    if estimator == "gae":
        if values is None:
            raise ValueError("GAE needs critic values")
        adv, returns = gae(rewards, values, mask, gamma, lam)
        return whiten(adv, mask), returns
    raise ValueError(f"unknown advantage estimator {estimator!r}")

