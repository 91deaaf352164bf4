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


class KLController:
    """The KL coefficient: fixed, or adapted towards a target KL (Ziegler et al. 2019):
    coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_samples / horizon."""

    def __init__(self, coef: float, target: float | None, horizon: int):
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, n_samples: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        self.coef = state["coef"]
