"""The reward-function contract.

A reward function is any callable `fn(prompt, response, ground_truth, **extra) -> float | dict`.
A dict holds named scores, one of them under the key "reward" (the one the algorithm uses);
the others are logged. `extra` carries any other fields of the dataset row and, for a multi-turn
trajectory (`agent.env`), `messages`: its whole conversation (OpenAI layout: the prompt, every
assistant turn with its parsed `tool_calls`, every tool or user reply), given to functions that
accept it (a `messages` argument or `**extra`). `response` is then the last assistant turn's text.
"""

from __future__ import annotations

from typing import Any, Protocol


class RewardFn(Protocol):
    def __call__(self, prompt: str, response: str, ground_truth: Any, **extra: Any) -> float | dict[str, float]: ...
