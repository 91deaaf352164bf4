"""KL estimators between the policy and a reference, per token (Schulman, "Approximating KL")."""

from __future__ import annotations

import torch


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi.

    k1: log r;  k2: (log r)^2 / 2;  k3: exp(-log r) - 1 + log r  (unbiased, non-negative),
    with log r = logprobs - ref_logprobs.
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of k1, k2, k3")
