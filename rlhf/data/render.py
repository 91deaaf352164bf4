"""Rows to token ids, one rendering for rollout, SFT and evaluation.

With `data.chat_template` on and a tokenizer that has a chat template, a prompt is the
conversation so far (optional system prompt, then the user's turn; for a conversation row,
every turn before its last assistant turn; for a conversational prompt, all of it) rendered with
the generation prompt. Otherwise it
is the plain text (system prompt and prompt joined by a newline).

An SFT example is the rendering of the whole exchange, cut into text segments at the turn
boundaries the template gives; each segment is tokenised on its own, so a prompt's tokens are
the same whether it is generated from or trained on, and the loss mask is exactly the
assistant segments (their content and end-of-turn markup), nothing the user or system said.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.data.rows import DataError, Row


class Renderer:
    def __init__(self, tokenizer, chat_template: bool, system_prompt: str | None, tools: list[dict] | None = None):
        """`tools`: JSON schemas given to the chat template with every row that has none of its own
        (a multi-turn run's environment's tools, so SFT, rollout and evaluation see the same prompt)."""
        self.tok = tokenizer
        self.templated = chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.system_prompt = system_prompt
        self.tools = tools or None
        self.eos = tokenizer.eos_token_id

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids if text else []

    def _render(self, messages: list[dict], generation_prompt: bool, tools: list[dict] | None = None) -> str:
        return self.tok.apply_chat_template(messages, tools=tools or self.tools, tokenize=False,
                                            add_generation_prompt=generation_prompt)

    def _conversation(self, row: Row) -> tuple[list[dict], int]:
        """The row as messages: its conversation, its conversational prompt and the response if
        any, or (system,) user and the response if any; and the index of the first turn that
        may be a target (SFT learns assistant turns from there on)."""
        convo = row.messages if row.messages is not None else row.context
        if convo is not None:
            head = [] if not self.system_prompt or convo[0]["role"] == "system" else [
                {"role": "system", "content": self.system_prompt}]
            if row.messages is not None:
                return head + convo, 0
            reply = [{"role": "assistant", "content": row.response}] if row.response is not None else []
            return head + convo + reply, len(head) + len(convo)
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        msgs.append({"role": "user", "content": row.prompt})
        if row.response is not None:
            msgs.append({"role": "assistant", "content": row.response})
        return msgs, 0

    def prompt_ids(self, row: Row) -> list[int]:
        if not self.templated:
            if row.messages is not None or row.context is not None:
                what = "a conversation (data.messages_key)" if row.messages is not None else \
                    "a conversational prompt (a list of messages in data.prompt_key)"
                raise DataError(f"{row.origin}: {what} needs a tokenizer with a chat template and "
                                f"data.chat_template=true")
            text = f"{self.system_prompt}\n{row.prompt}" if self.system_prompt else row.prompt
            return self.tok(text).input_ids
        msgs, first = self._conversation(row)
        if row.context is not None:
            return self._ids(self._render(msgs[:first], generation_prompt=True, tools=row.tools))
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=len(msgs))
        return self._ids(self._render(msgs[:last], generation_prompt=True, tools=row.tools))

    def sft_example(self, row: Row) -> tuple[list[int], list[int]]:
        """Token ids of the whole example and its loss mask (1 on tokens the model must learn)."""
        if row.response is None and row.messages is None:
            raise DataError(f"{row.origin}: SFT needs a target: a response column (data.response_key) or a "
                            f"conversation (data.messages_key)")
        if not self.templated:
            prompt = self.prompt_ids(row)
            response = self._ids(row.response) + [self.eos]
            return prompt + response, [0] * len(prompt) + [1] * len(response)
        msgs, first = self._conversation(row)
        ids, mask, done = [], [], ""
        for i, m in enumerate(msgs):
            if m["role"] != "assistant" or i < first:
                continue
            before = self._render(msgs[:i], generation_prompt=True, tools=row.tools) if i else ""
            after = self._render(msgs[: i + 1], generation_prompt=False, tools=row.tools)
            if not (before.startswith(done) and after.startswith(before)):
                raise DataError(
                    f"{row.origin}: the tokenizer's chat template does not render a conversation's turns as "
                    f"prefixes of each other (e.g. it rewrites earlier turns), so assistant tokens cannot be "
                    f"located; set data.chat_template=false or use a template that appends turns"
                )
            for text, learn in ((before[len(done):], 0), (after[len(before):], 1)):
                piece = self._ids(text)
                ids += piece
                mask += [learn] * len(piece)
            done = after
        tail = self._ids(self._render(msgs, generation_prompt=False, tools=row.tools)[len(done):])
        return ids + tail, mask + [0] * len(tail)


@dataclass
class Filtered:
    rows: list[Row]
    long_prompts: int  # rows dropped: prompt over the limit
    long_examples: int  # rows dropped: SFT example (prompt and target) over the model length


def keep_fitting(rows: list[Row], renderer: Renderer, max_prompt_tokens: int, max_len: int, sft: bool) -> Filtered:
    """The rows whose prompt fits `max_prompt_tokens` (and, for SFT, whose whole example fits
    `max_len`); the rest are counted, not fatal."""
    kept, long_prompts, long_examples = [], 0, 0
    for row in rows:
        if len(renderer.prompt_ids(row)) > max_prompt_tokens:
            long_prompts += 1
        elif sft and len(renderer.sft_example(row)[0]) > max_len:
            long_examples += 1
        else:
            kept.append(row)
    return Filtered(kept, long_prompts, long_examples)
