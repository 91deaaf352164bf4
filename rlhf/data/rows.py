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
    messages: list | None = None  # SFT conversation: [{"role": ..., "content": ...}, ...]
    extra: dict = field(default_factory=dict)  # further columns, handed to reward functions as **extra
    origin: str = ""  # where the row came from ("file, row N"), for error messages
    # the prompt as a conversation (verl's and TRL's conversational prompts), all of it context:
    # the reply (generated, or `response` for SFT) follows its last turn
    context: list | None = None


ROLES = ("system", "user", "assistant")


def _turns(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise DataError(f"{where}: expected a non-empty list of {{role, content}} messages, got {messages!r:.80}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(
                f"{where}: message {i} must be {{role: one of {'/'.join(ROLES)}, content: a string}}, got {m!r:.80}"
            )
        out.append({"role": m["role"], "content": m["content"]})
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
