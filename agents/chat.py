"""Token in, token out for multi-turn trajectories.

A trajectory's tokens are the prompt's, then each assistant turn's ids exactly as sampled (never
decoded and re-tokenized), then each environment reply rendered on its own with the chat
template and appended. A reply is rendered after a fixed probe conversation that ends with an
assistant turn, so its tokens do not depend on what the model wrote; what the template writes
after an assistant turn's content (its end-of-turn marks) is appended where the sampled ids
stop short of it (a model stops at `<|im_end|>`, the template also writes the newline after it).

Chat templates are not all append-only (some rewrite earlier turns, some write a turn's header
in the history unlike the generation prompt the model saw), and
a sampled id sequence need not be the one tokenizing its text would give. So every finished
trajectory is compared with the template's rendering of its whole conversation, tokenized: where
they differ, the trajectory is counted (`agent/template_mismatch`) and the first difference is
logged once. Training uses the tokens as sampled either way.
"""

from __future__ import annotations

_SENTINEL = "\u2063rlhf-probe\u2063"
_PROBE = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}]


class TemplateError(ValueError):
    """A chat template that cannot serve multi-turn rollouts, named with the fix."""


def as_written(message: dict) -> dict:
    """A sampled assistant message as the model wrote it, for the template: its text only (the
    parsed tool calls and our annotations left out: the text already holds them)."""
    return {"role": "assistant", "content": message["content"]}


class ChatTokens:
    def __init__(self, tokenizer, tools: list[dict] | None):
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(f"multi-turn rollouts (agent.env) need a tokenizer with a chat template; "
                                f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')} has none: use an instruct "
                                f"model's tokenizer or set tokenizer.chat_template")
        self.tok, self.tools = tokenizer, tools or None
        self.name = getattr(tokenizer, "name_or_path", "") or "the chat template"
        self.eos = tokenizer.eos_token_id
        probe = self.render(_PROBE, False)
        if _SENTINEL not in probe:
            raise TemplateError(f"the chat template of {self.name} does not write an assistant turn's content as given")

    def render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tools=self.tools, tokenize=False,
                                            add_generation_prompt=generation_prompt)

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids if text else []

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.ids(self.render(messages, True))

    def assistant_text(self, sampled: list[int]) -> str:
        """A turn's text as the model wrote it, without the end-of-sequence id it stopped on."""
        if sampled and sampled[-1] == self.eos:
            sampled = sampled[:-1]
        return self.tok.decode(sampled, skip_special_tokens=False)

    def reply_ids(self, replies: list[dict], last_id: int | None) -> list[int]:
        """The ids that follow a sampled assistant turn whose last sampled id is `last_id`: what the
        template writes after an assistant turn's content when `replies` follow it (its end-of-turn
        marks, less the one the model sampled), the replies, and the next assistant turn's header."""
        after = self.render(_PROBE + replies, True)
        tail = after[after.rindex(_SENTINEL) + len(_SENTINEL):]
        if last_id is not None and last_id in self.tok.all_special_ids:
            last = self.tok.decode([last_id], skip_special_tokens=False)
            if tail.startswith(last):
                tail = tail[len(last):]
        return self.ids(tail)

    def first_difference(self, messages: list[dict], ids: list[int]) -> int | None:
        """Where `ids` (a finished trajectory) first differs from the template's rendering of its
        whole conversation (sampled turns `as_written`), tokenized; None where they agree."""
        expected = self.ids(self.render(messages, False))
        for i, (a, b) in enumerate(zip(ids, expected)):
            if a != b:
                return i
        return None if len(expected) >= len(ids) else len(expected)
