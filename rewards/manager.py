"""Scores a batch of responses with the configured reward function.

A failing call (exception, non-finite or non-numeric result) gives that sample the fallback
reward and is counted, so one bad sample never kills a run.
"""

from __future__ import annotations

import math
import traceback
from collections import Counter
from dataclasses import dataclass, field

from rewards.base import RewardFn


@dataclass
class RewardManager:
    fn: RewardFn
    fallback: float = 0.0
    errors: Counter = field(default_factory=Counter)
    first_traceback: str | None = None

    def _one(self, prompt: str, response: str, answer, extra: dict) -> tuple[float, dict[str, float]]:
        try:
            out = self.fn(prompt, response, answer, **extra)
        except Exception:
            self.errors["exception"] += 1
            self.first_traceback = self.first_traceback or traceback.format_exc()
            return self.fallback, {}
        named = dict(out) if isinstance(out, dict) else {"reward": out}
        value = named.get("reward")
        if not isinstance(value, (int, float)):
            self.errors["bad_type"] += 1
            return self.fallback, {}
        if not math.isfinite(value):
            self.errors["non_finite"] += 1
            return self.fallback, {}
        return float(value), {k: float(v) for k, v in named.items() if k != "reward"}

    def score(self, prompts: list[str], responses: list[str], answers: list, extras: list[dict] | None = None):
        """Returns (rewards, each extra named score averaged over the samples that reported it,
        error counts of this call)."""
        before = Counter(self.errors)
        extras = extras or [{}] * len(prompts)
        rewards, sums, counts = [], Counter(), Counter()
        for p, r, a, e in zip(prompts, responses, answers, extras):
            value, scores = self._one(p, r, a, e)
            rewards.append(value)
            sums.update(scores)
            counts.update(scores.keys())
        means = {f"reward/{k}": sums[k] / counts[k] for k in sums}
        return rewards, means, dict(self.errors - before)
