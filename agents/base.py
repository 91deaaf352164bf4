"""The environment contract: what a multi-turn task is to the rollout layer.

One environment instance serves one trajectory; it is made from the dataset row and answers
each assistant turn:

    class MyEnv:
        tools: list[dict] = []                       # JSON schemas, given to the chat template (tools=)
        def __init__(self, row: dict): ...           # one instance per trajectory
        def reset(self) -> list[dict]: ...           # messages added before the first assistant turn (may be [])
        def step(self, messages: list[dict]) -> tuple[list[dict], float | None, bool]: ...

`row` holds the row's `prompt`, `answer` and its extra columns (`data.extra_keys`). `messages` is
the conversation so far, ending with the assistant's turn: its text in `content`, its tool calls
parsed into `tool_calls` (OpenAI layout, `arguments` a dict), and, when the text held a tool call
that could not be parsed, the reason in `tool_call_error`. `step` returns the new messages (tool
results, user feedback), an optional reward for this step (the episode's rewards are summed), and
whether the episode is over. `reset` and `step` may also be coroutine functions.

`ToolEnv` is the usual base: its tools are static methods named as in `tools`, and each call runs
in a worker process under a timeout (`agents.tool_runner`), so a tool that raises, hangs, or
returns something other than a string becomes an error message the model reads, never a stopped run.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Protocol


class Environment(Protocol):
    tools: list[dict]

    def __init__(self, row: dict) -> None: ...

    def reset(self) -> list[dict]: ...

    def step(self, messages: list[dict]) -> tuple[list[dict], float | None, bool]: ...


def tool_schema(name: str, description: str, parameters: dict[str, str], required: list[str] | None = None) -> dict:
    """A tool's JSON schema in the layout chat templates read, from `{parameter: description}`
    (every parameter a string unless the description starts with a JSON type and a colon,
    e.g. "integer: how many")."""
    props = {}
    for key, text in parameters.items():
        kind, sep, rest = text.partition(":")
        typed = sep and kind in ("string", "integer", "number", "boolean", "array", "object")
        props[key] = {"type": kind if typed else "string", "description": rest.strip() if typed else text}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": list(parameters) if required is None else required}}}


class ToolEnv:
    """An environment that runs the assistant's tool calls and ends at its first turn without one.

    Subclasses list `tools` (see `tool_schema`) and define each tool as a static method of the same
    name taking the schema's parameters and returning a string. The rollout layer sets
    `tool_runner` before `reset`; every call goes through it (a worker process, a timeout, output
    capped), and failures are counted by kind in `tool_errors`. `reward` (None by default: leave
    it to the reward functions) is the episode's reward when it ends."""

    tools: list[dict] = []
    tool_runner: Any = None  # set by the rollout layer: a ToolRunner, `call(name, arguments) -> (text, error kind or None)`

    def __init__(self, row: dict):
        self.row = row
        self.tool_errors: Counter = Counter()

    def reset(self) -> list[dict]:
        return []

    def reward(self, messages: list[dict]) -> float | None:
        return None

    def step(self, messages: list[dict]) -> tuple[list[dict], float | None, bool]:
        turn = messages[-1]
        calls = turn.get("tool_calls") or []
        if turn.get("tool_call_error"):
            self.tool_errors["unparsable"] += 1
            return [{"role": "tool", "content": f"error: {turn['tool_call_error']}"}], None, False
        if not calls:
            return [], self.reward(messages), True
        return [{"role": "tool", "name": call["function"]["name"], "content": self.call(call)} for call in calls], None, False

    def call(self, call: dict) -> str:
        """One tool call's result text, or an error text the model reads."""
        name, arguments = call["function"]["name"], call["function"].get("arguments") or {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = None
        if name not in {t["function"]["name"] for t in self.tools}:
            self.tool_errors["unknown_tool"] += 1
            return f"error: no tool named {name!r} (tools: {', '.join(t['function']['name'] for t in self.tools)})"
        if not isinstance(arguments, dict):
            self.tool_errors["bad_arguments"] += 1
            return f"error: the arguments of {name} must be a JSON object"
        text, error = self.tool_runner.call(name, arguments)
        if error:
            self.tool_errors[error] += 1
        return text
