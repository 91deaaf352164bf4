"""The rollout-engine role: generate samples and take new weights."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from tensordict import TensorDict


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    max_new_tokens: int
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    stop: tuple[str, ...] = ()  # a response ends with the first of these it produces (kept in it)
    # Prompt i's samples are drawn with seed + i: what a batch holds depends on the seed and the
    # prompts only, not on what the engine generated before, so a resumed run draws the same.
    seed: int | None = None
    # False: the engine's generator is reseeded with `seed` instead (vLLM samples unseeded requests
    # in one batched kernel, ~27% faster on an H100); the samples then also depend on how the
    # prompts were split over engines.
    seed_per_prompt: bool = True


@dataclass
class Trajectories:
    """Multi-turn rollouts: the batch (`response_mask` 1 on sampled tokens only, `env_rewards` [B]),
    each trajectory's conversation (for reward functions), and the batch's `agent/*` metrics."""

    batch: TensorDict
    messages: list[list[dict]]
    stats: dict[str, float] = field(default_factory=dict)


class RolloutEngine(ABC):
    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> TensorDict:
        """n samples per prompt, in the batch layout of `core.batch`, with `rollout_logprobs`
        and `group_ids` (the prompt's index); samples of one prompt are adjacent."""

    def trajectories(self, rows: list[dict], sampling: Sampling, agent) -> Trajectories:
        """`sampling.n` multi-turn episodes per row against the environment `agent` names
        (rollout/trajectory.py); samples of one row are adjacent, `group_ids` its index."""
        raise NotImplementedError(f"{type(self).__name__} does not run multi-turn trajectories")

    timing: dict[str, float] = {}  # the last generate call's phases, in seconds (metrics)

    @property
    @abstractmethod
    def weight_names(self) -> list[str]:
        """The HF names a weight push must carry, every one of them (see `weight_sync`)."""

    def begin_push(self) -> None:
        """Called before a push's first payload: from here to `weights_updated` nothing may be
        sampled (a push may come in several payloads; requests in flight under partial rollouts
        must never sample on half-loaded weights)."""

    @abstractmethod
    def weights_updated(self) -> None:
        """Called after every complete push: drop anything computed with the old weights (and end
        what `begin_push` began)."""

    def generated(self) -> None:
        """Called after each generation is collected, while the engine would otherwise wait for the
        trainer: a chance to drop early what `weights_updated` would drop, so the push need not
        wait for it."""
