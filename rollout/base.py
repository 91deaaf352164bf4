"""The rollout-engine role: generate samples and take new weights."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from tensordict import TensorDict

from rollout.bridge import Bucket


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    max_new_tokens: int
    top_p: float = 1.0
    # Prompt i's samples are drawn with seed + i: what a batch holds depends on the seed and the
    # prompts only, not on what the engine generated before, so a resumed run draws the same.
    seed: int | None = None


class RolloutEngine(ABC):
    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> TensorDict:
        """n samples per prompt, in the batch layout of `rlhf.batch`, with `rollout_logprobs`
        and `group_ids` (the prompt's index); samples of one prompt are adjacent."""

    @abstractmethod
    def update_weights(self, buckets: list[Bucket]) -> None:
        """Load full HF-named weights (packed in buckets) into the live engine."""
