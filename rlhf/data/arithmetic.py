"""The built-in task: integer arithmetic questions with exact answers, generated offline.

Deterministic by seed, with disjoint train and held-out eval splits, so the default job
needs no download and its accuracy numbers mean the same thing on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str


def _render(a: int, op: str, b: int) -> Problem:
    value = a + b if op == "+" else a - b
    return Problem(prompt=f"{a}{op}{b}=", answer=str(value))


def make_splits(
    seed: int, max_operand: int, ops: str, num_eval: int
) -> tuple[list[Problem], list[Problem]]:
    """All problems with operands in [0, max_operand], shuffled by seed, split into train and eval."""
    if not ops or any(op not in "+-" for op in ops):
        raise ValueError(f"task.ops must be made of '+' and '-', got {ops!r}")
    universe = [
        (a, op, b)
        for op in ops
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
        if op == "+" or a >= b
    ]
    if num_eval >= len(universe) // 2:
        raise ValueError(
            f"task.num_eval={num_eval} leaves too few training problems out of {len(universe)}; "
            f"lower task.num_eval or raise task.max_operand"
        )
    random.Random(seed).shuffle(universe)
    problems = [_render(*t) for t in universe]
    return problems[num_eval:], problems[:num_eval]


def corpus(problems: list[Problem]) -> list[str]:
    """Full texts (prompt + answer), used to train the tokenizer and for SFT."""
    return [p.prompt + p.answer for p in problems]
