"""Per-token quantities every engine computes the same way, in the batch layout of `rlhf.batch`
(column t holds the value for token t, predicted from the tokens before it; column 0 is 0).

Both are taken in float32 whatever the compute dtype: the rollout-vs-trainer gap and PPO's
ratios are differences of log-probs, and bf16 log-softmax alone moves them by ~1e-2.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Column t gets log p(input_ids[t] | < t); column 0 gets 0 (no prediction for it)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = lp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(picked, (1, 0))


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Column t gets the entropy of the distribution that predicted token t (same layout)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return torch.nn.functional.pad(-(lp.exp() * lp).sum(-1), (1, 0))


def token_values(scores: torch.Tensor) -> torch.Tensor:
    """A value head's [B, T, 1] output in the log-prob layout: V at column t values the state
    before token t, i.e. the head's output at position t-1."""
    return torch.nn.functional.pad(scores[:, :-1, 0].float(), (1, 0))
