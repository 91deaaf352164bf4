"""The batch transformations an RL step applies before its advantages, in this order: reward
shaping on the scores, then the samples that leave the loss. Each takes the batch (see
core/batch.py) and returns it with new tensors in place of the old (the tensors it was given
are not changed), so the step reads as a list of named steps."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from rlhf.algos.rollout_correction import mis_keep


def overlong_penalty(batch: TensorDict, buffer: int, max_new_tokens: int) -> TensorDict:
    """DAPO's soft overlong penalty: 0 until the last `buffer` tokens before the limit, then down
    linearly to -1 at it, added to each sample's score (0: off)."""
    if buffer:
        start = max_new_tokens - buffer
        lengths = batch["response_mask"].sum(-1)
        batch["scores"] = batch["scores"] + ((start - lengths) / buffer).clamp(-1, 0)
    return batch


def _leave_loss(batch: TensorDict, rows: torch.Tensor) -> TensorDict:
    batch["response_mask"] = batch["response_mask"] * (~rows).float()[:, None]
    return batch


def drop_failed_groups(batch: TensorDict) -> TensorDict:
    """`reward.on_error=drop_group`: every sample of a prompt one of whose rewards failed leaves
    the loss (its group's baseline would be wrong)."""
    failed = batch["reward_failed"]
    if failed.any():
        batch = _leave_loss(batch, torch.isin(batch["group_ids"], batch["group_ids"][failed]))
    return batch


def drop_truncated(batch: TensorDict) -> TensorDict:
    """DAPO's overlong filter: samples cut at a length limit leave the loss."""
    return _leave_loss(batch, batch["truncated"].bool())


def drop_mismatched(batch: TensorDict, low: float, high: float) -> tuple[TensorDict, float]:
    """Masked importance sampling (`algo.rollout_correction=mis`): sequences whose rollout /
    trainer ratio lies outside [low, high] leave the loss; returns the batch and the share of
    non-empty sequences dropped."""
    mask = batch["response_mask"]
    keep = mis_keep(batch["old_logprobs"], batch["rollout_logprobs"], mask, low, high)
    has = mask.sum(-1) > 0
    dropped = float((has & ~keep).sum() / has.sum().clamp(min=1))
    return _leave_loss(batch, ~keep), dropped
