"""Numbers that explain a run: how well the critic predicts, and how much of the reward a
prompt alone can predict."""

from __future__ import annotations

import torch

from rlhf.algos.advantages import group_stats


def explained_variance(returns: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the masked tokens: 1 for a perfect critic,
    0 for one that predicts the mean, negative for worse. 0 when the returns do not vary."""
    m = mask.bool()
    r, v = returns[m], values[m]
    if r.numel() < 2:
        return 0.0
    var = r.var()
    return float(1 - (r - v).var() / var) if var > 0 else 0.0


def between_group_share(scores: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Share of the reward variance that lies between prompts: 1 - pooled within-group variance
    / total variance (both unbiased). A critic that saw only the prompt could explain this much
    of the outcome variance at best; the rest is luck of the draw within a prompt's samples."""
    scores = scores.float()
    mean, _, _ = group_stats(scores, group_ids)
    n, groups = scores.numel(), int(torch.unique(group_ids).numel())
    if n - groups < 1 or n < 2:
        return 0.0
    total = scores.var()
    if total <= 0:
        return 0.0
    within = ((scores - mean) ** 2).sum() / (n - groups)
    return float(1 - within / total)
