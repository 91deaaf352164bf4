"""Tool calls read from an assistant turn's text by one of vLLM's tool parsers (`agent.tool_parser`:
the names of vLLM's `--tool-call-parser`, e.g. `hermes` for the `<tool_call>{json}</tool_call>`
format of Qwen and Hermes models), into the OpenAI message layout chat templates and
environments read."""

from __future__ import annotations

import json
import logging


class _Quiet(logging.Filter):
    """vLLM's parsers log a traceback for every malformed call; during RL a model writes many, and
    each is counted (`agent/tool_errors`, kind `unparsable`) and answered, so the log drops them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "extracting tool call" not in record.getMessage()


class ToolCallParser:
    def __init__(self, name: str, tokenizer):
        try:
            from vllm.tool_parsers import ToolParserManager
        except ImportError:  # older layout
            from vllm.entrypoints.openai.tool_parsers import ToolParserManager

        try:
            cls = ToolParserManager.get_tool_parser(name)
        except KeyError as e:
            raise ValueError(f"agent.tool_parser={name!r} is not one of vLLM's tool parsers "
                             f"({', '.join(sorted(ToolParserManager.lazy_parsers or ToolParserManager.tool_parsers))})") from e
        self.parser = cls(tokenizer)
        self.start = getattr(self.parser, "tool_call_start_token", None)
        logging.getLogger(cls.__module__).addFilter(_Quiet())

    def parse(self, text: str) -> dict:
        """The assistant message for `text`: `content`, and `tool_calls` when it calls tools, or
        `tool_call_error` when it tried to (the parser's start marker) and the call is malformed."""
        message = {"role": "assistant", "content": text}
        info = self.parser.extract_tool_calls(text, None)
        if info.tools_called and info.tool_calls:
            calls = []
            for i, call in enumerate(info.tool_calls):
                try:
                    arguments = json.loads(call.function.arguments) if call.function.arguments else {}
                except ValueError:
                    arguments = call.function.arguments
                calls.append({"id": call.id or f"call_{i}", "type": "function",
                              "function": {"name": call.function.name, "arguments": arguments}})
            message["tool_calls"] = calls
        elif self.start and self.start in text:
            message["tool_call_error"] = (f"could not parse the tool call: write {self.start}"
                                          '{"name": ..., "arguments": {...}} with valid JSON')
        return message
