"""Built-in reward functions (selectable by name)."""

from __future__ import annotations


def exact_match(prompt: str, response: str, ground_truth: str, **extra) -> float:
    """1.0 when the response, stripped of surrounding whitespace, is exactly the answer.

    The reward of the built-in arithmetic task: its answers are plain integers.
    """
    return float(response.strip() == str(ground_truth).strip())


BUILTINS = {"exact_match": exact_match, "arithmetic": exact_match}
