"""The built-in tool task: products of two numbers in [10, task.max_operand], which a 1 M-parameter
model cannot compute in its head but can read off a calculator (`agent.env=calculator`).

Deterministic by seed, disjoint train and held-out splits. Demonstrations for SFT are
conversations in the OpenAI layout: the question, a calculator call, the tool's answer, the
answer. The teacher is imperfect: on `task.demo_tool_skip` of the problems it skips the tool
and guesses (the product rounded to hundreds), so SFT leaves a policy that often guesses, and
RL's exact-answer reward teaches it to use the tool. Without the tool (`agent.env=null`) the
demonstrations answer directly and correctly: the same model trained on them is the baseline.
"""

from __future__ import annotations

import json
import random

from rlhf.data.rows import Row

TOOL = "calculator"


def _call(a: int, b: int) -> dict:
    return {"id": "call_0", "type": "function",
            "function": {"name": TOOL, "arguments": {"expression": f"{a}*{b}"}}}


def _row(a: int, b: int, tools: bool, guess: bool) -> Row:
    question, value = f"{a}*{b}", a * b
    if not tools:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": str(value)}]
    elif guess:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": str(round(value, -2))}]
    else:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": "", "tool_calls": [_call(a, b)]},
                    {"role": "tool", "name": TOOL, "content": str(value)}, {"role": "assistant", "content": str(value)}]
    return Row(prompt=question, answer=str(value), messages=messages, origin=f"arithmetic_tools {question}")


def make_splits(seed: int, max_operand: int, num_train: int, num_eval: int, demo_tool_skip: float,
                tools: bool) -> tuple[list[Row], list[Row]]:
    if max_operand < 20:
        raise ValueError(f"task.max_operand must be at least 20 for arithmetic_tools (operands from 10), got {max_operand}")
    rng = random.Random(seed)
    span = max_operand - 9
    if num_train + num_eval > span * span // 2:
        raise ValueError(f"task.num_train + task.num_eval = {num_train + num_eval} is over half of the {span * span} "
                         f"products with operands in [10, {max_operand}]; lower them or raise task.max_operand")
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < num_train + num_eval:
        pairs.add((rng.randint(10, max_operand), rng.randint(10, max_operand)))
    ordered = sorted(pairs)
    rng.shuffle(ordered)
    rows = [_row(a, b, tools, rng.random() < demo_tool_skip) for a, b in ordered]
    return rows[num_eval:], rows[:num_eval]


def corpus(rows: list[Row]) -> list[str]:
    """The texts the tiny model's tokenizer learns: questions, calls as the template writes them,
    answers, and the template's words."""
    texts = ["Tools: calculator(expression)", "system\n", "user\n", "assistant\n", "tool\n"]
    for row in rows:
        texts.append(row.prompt)
        texts.append(row.answer)
        a, b = row.prompt.split("*")
        texts.append(json.dumps({"name": TOOL, "arguments": {"expression": f"{a}*{b}"}}))
    return texts
