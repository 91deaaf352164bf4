"""KL estimators between the policy and a reference, per token (Schulman, "Approximating KL")."""

from __future__ import annotations

import torch


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str,
                log_ratio_clamp: float | None = None) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi.

    k1: log r;  k2: (log r)^2 / 2;  k3: exp(-log r) - 1 + log r  (unbiased, non-negative),
    with log r = logprobs - ref_logprobs, clamped to [-log_ratio_clamp, log_ratio_clamp] first
    when given (so k3's exp cannot overflow to inf, whose gradient would be NaN).
    """
    log_ratio = logprobs - ref_logprobs
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of k1, k2, k3")


def clamp_kl(kl: torch.Tensor, bound: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-token KL estimate clamped to [-bound, bound] (no gradient where it bites), and a
    0/1 tensor marking the tokens where it bit. A token whose policy gives a sampled token far
    less probability than the reference does adds exp(-log r) under k3: 3e6 at log r = -15."""
    if bound is None:
        return kl, torch.zeros_like(kl)
    return kl.clamp(-bound, bound), (kl.abs() > bound).float()


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
