"""The dataset protocol: what every data source yields, one `Row` per example.

Sources (files, the built-in task) produce rows; the rest of the driver sees only rows, so a
new source needs nothing else to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """A data file or row that cannot be used, named with where it is and how to fix it."""


@dataclass(frozen=True)
class Row:
    prompt: str  # the question; for a conversation, its last user turn (what reward functions see)
    answer: Any  # ground truth handed to reward functions (None when the source has none)
    response: str | None = None  # SFT target for the prompt
    messages: list | None = None  # SFT conversation: [{"role": ..., "content": ...}, ...] (tool calls: see _turns)
    extra: dict = field(default_factory=dict)  # further columns, handed to reward functions as **extra
    origin: str = ""  # where the row came from ("file, row N"), for error messages
    # the prompt as a conversation (verl's and TRL's conversational prompts), all of it context:
    # the reply (generated, or `response` for SFT) follows its last turn
    context: list | None = None
    tools: list | None = None  # the row's tools (JSON schemas, TRL's `tools` column), given to the chat template


ROLES = ("system", "user", "assistant", "tool")


def _tool_calls(calls: Any, where: str) -> list[dict]:
    """An assistant turn's tool calls in the OpenAI layout: [{type: function, function: {name,
    arguments}}], the arguments an object or its JSON text (kept as given)."""
    if not isinstance(calls, (list, tuple)) or not calls:
        raise DataError(f"{where}: tool_calls must be a non-empty list, got {calls!r:.80}")
    out = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(fn.get("arguments"), (dict, str)):
            raise DataError(f"{where}: a tool call must be {{type: function, function: {{name: a string, arguments: an "
                            f"object}}}} (OpenAI's layout), got {call!r:.100}")
        out.append({k: v for k, v in call.items() if k in ("id", "type", "function")})
    return out


def _turns(messages: Any, where: str) -> list[dict]:
    """{role, content} messages; an assistant turn may call tools (`tool_calls`, its content then
    possibly empty) and a `tool` turn answers one (with an optional `name` / `tool_call_id`)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{where}: expected a non-empty list of {{role, content}} messages, got {messages!r:.80}")
    out = []
    for i, m in enumerate(messages):
        calls = m.get("tool_calls") if isinstance(m, dict) and m.get("role") == "assistant" else None
        content = m.get("content") if isinstance(m, dict) else None
        if calls is not None and content is None:
            content = ""
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(content, str):
            raise DataError(
                f"{where}: message {i} must be {{role: one of {'/'.join(ROLES)}, content: a string}} (an assistant "
                f"turn may add tool_calls), got {m!r:.80}"
            )
        turn = {"role": m["role"], "content": content}
        if calls is not None:
            turn["tool_calls"] = _tool_calls(calls, f"{where}: message {i}")
        if m["role"] == "tool":
            turn.update({k: m[k] for k in ("name", "tool_call_id") if isinstance(m.get(k), str)})
        out.append(turn)
    return out


def check_messages(messages: Any, where: str) -> list[dict]:
    """A conversation as a list of {role, content} string pairs with at least one assistant turn."""
    out = _turns(messages, where)
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: the conversation has no assistant turn to learn from")
    return out


def check_context(messages: Any, where: str) -> list[dict]:
    """A conversational prompt: {role, content} string pairs with a user turn, not ending with
    the assistant (the reply is what comes next)."""
    out = _turns(messages, where)
    if not any(m["role"] == "user" for m in out):
        raise DataError(f"{where}: the prompt conversation has no user turn")
    if out[-1]["role"] == "assistant":
        raise DataError(f"{where}: the prompt conversation ends with an assistant turn; a prompt ends where the "
                        f"reply starts (an SFT conversation with its answer belongs in data.messages_key)")
    return out
