"""A calculator tool: the environment of the built-in `arithmetic_tools` task, where products the
tiny model cannot compute in its head are one tool call away."""

from __future__ import annotations

import ast
import operator

from agents.base import ToolEnv, tool_schema

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}


def evaluate(expression: str) -> int:
    """An integer expression of + - * // % and parentheses, evaluated without `eval`; numbers
    longer than 12 digits are refused (no unbounded work)."""

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int and abs(node.value) < 10**12:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.operand))
        raise ValueError(f"unsupported expression element {type(node).__name__}")

    if len(expression) > 200:
        raise ValueError("expression too long")
    return walk(ast.parse(expression, mode="eval"))


class CalculatorEnv(ToolEnv):
    tools = [tool_schema("calculator", "Evaluate an integer arithmetic expression.",
                         {"expression": "the expression, e.g. 12*34"})]

    @staticmethod
    def calculator(expression: str) -> str:
        return str(evaluate(str(expression)))
