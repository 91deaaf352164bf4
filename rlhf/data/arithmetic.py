"""The built-in task: integer arithmetic questions with exact answers, generated offline.

Deterministic by seed, with disjoint train and held-out eval splits, so the default job
needs no download and its accuracy numbers mean the same thing on every machine.

A source of rows (`rlhf.data.rows`): the prompt, the exact answer, and a demonstration for SFT
as the row's response. Demonstrations can come from an imperfect teacher that forgets the
carry (or borrow) on a given fraction of the problems that need one, as real warm-start data
is imperfect; the exact-answer reward of RL is not.
"""

from __future__ import annotations

import random

from rlhf.data.rows import Row


def _render(a: int, op: str, b: int, careless: bool) -> Row:
    value = a + b if op == "+" else a - b
    demo = value
    if careless and op == "+" and a % 10 + b % 10 >= 10:
        demo = value - 10  # the carry into the tens is dropped
    if careless and op == "-" and a % 10 < b % 10:
        demo = value + 10  # the borrow from the tens is dropped
    # the response is the teacher's demonstration (possibly wrong); the answer is exact
    return Row(prompt=f"{a}{op}{b}=", answer=str(value), response=str(demo), origin=f"arithmetic {a}{op}{b}")


def problem_count(max_operand: int, ops: str) -> int:
    """How many problems `make_splits` draws from, counted without listing them (the config check's)."""
    n = max_operand + 1
    return sum(n * n if op == "+" else n * (n + 1) // 2 for op in ops)


def make_splits(
    seed: int, max_operand: int, ops: str, num_eval: int, demo_carry_error: float = 0.0
) -> tuple[list[Row], list[Row]]:
    """All problems with operands in [0, max_operand], shuffled by seed, split into train and eval.

    `demo_carry_error` is the probability that a problem's demonstration drops its carry/borrow.
    """
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
    if not 0.0 <= demo_carry_error <= 1.0:
        raise ValueError(f"task.demo_carry_error must be in [0, 1], got {demo_carry_error}")
    rng = random.Random(seed)
    rng.shuffle(universe)
    problems = [_render(*t, careless=rng.random() < demo_carry_error) for t in universe]
    return problems[num_eval:], problems[:num_eval]


def corpus(problems: list[Row]) -> list[str]:
    """Full texts (prompt + answer), used to train the tokenizer."""
    return [p.prompt + p.answer for p in problems]
