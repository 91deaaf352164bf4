"""The reference workload's reward: one that varies between samples, so advantages are not all zero.

For the product: `reward.fn=benchmarks/reference_rewards.py:length_reward`. The TRL benchmark
(`benchmarks/vs_trl/run_trl.py`) wraps the same function in TRL's batched signature.
"""

from __future__ import annotations


def length_reward(prompt: str, response: str, ground_truth, **extra) -> float:
    """Length of the decoded response in characters, divided by 100.

    The response is the text the caller decoded: both our controller and TRL use the tokenizer's
    `batch_decode(..., skip_special_tokens=True)`, so both systems score a sample alike.

    Characters, not tokens: a random model mostly samples ids beyond the tokenizer's vocabulary,
    which decoding drops, so the reward varies with how many known tokens a sample drew.
    """
    return len(response) / 100
