"""Advantage estimators: pure functions on tensors, run by the driver."""

from __future__ import annotations

import torch


def grpo(scores: torch.Tensor, group_ids: torch.Tensor, norm_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO group-normalised advantage per sample: (r - mean_group) / (std_group + eps).

    `std` is the unbiased sample std, as in the GRPO paper and TRL; a group whose rewards are
    all equal gets advantage 0 (nothing to learn from it).
    """
    adv = torch.zeros_like(scores, dtype=torch.float32)
    for g in group_ids.unique():
        idx = (group_ids == g).nonzero().squeeze(-1)
        r = scores[idx].float()
        centred = r - r.mean()
        if norm_by_std:
            std = r.std() if r.numel() > 1 else torch.tensor(0.0)
            centred = centred / (std + eps)
        adv[idx] = centred
    return adv


def broadcast_to_tokens(per_sample: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Outcome advantages: every response token of a sample carries the sample's advantage."""
    return per_sample[:, None] * response_mask
