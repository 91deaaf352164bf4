"""The agents layer without an engine: chat-template token bookkeeping against whole renderings,
vLLM's tool-call parser, tools in worker processes under every failure, and environments by name."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PLUGINS = f"{HERE / 'env_plugins.py'}"


@pytest.fixture(scope="module")
def chat_tok(tiny_chat_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_model)


def _conversation():
    call = {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": {"expression": "12*34"}}}
    return [{"role": "user", "content": "12*34"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "calculator", "content": "408"},
            {"role": "assistant", "content": "408"}]


def test_reply_tokens_rebuild_the_whole_rendering(chat_tok):
    """prompt ids + sampled ids + reply ids (the environment's messages rendered on their own)
    are exactly the tokenized rendering of the whole conversation, written out in the test."""
    from agents.chat import ChatTokens
    from agents.registry import resolve_env

    chat = ChatTokens(chat_tok, resolve_env("calculator").tools)
    convo = _conversation()
    whole = chat_tok(chat_tok.apply_chat_template(convo, tools=chat.tools, tokenize=False), add_special_tokens=False).input_ids
    prompt = chat.prompt_ids(convo[:1])
    # what a model would sample: the assistant turn's text, ending with the end-of-turn id
    first = chat_tok(chat_tok.apply_chat_template(convo[:2], tools=chat.tools, tokenize=False),
                     add_special_tokens=False).input_ids[len(prompt):]
    first = first[: first.index(chat_tok.eos_token_id) + 1]
    reply = chat.reply_ids(convo[2:3], first[-1])
    second = chat_tok("408", add_special_tokens=False).input_ids + [chat_tok.eos_token_id]
    ids = prompt + first + reply + second
    assert ids == whole[: len(ids)]
    assert chat_tok.decode(whole[len(ids):]) == "\n"  # only the template's newline after the last turn
    written = convo[:1] + [{"role": "assistant", "content": chat.assistant_text(first)}] + convo[2:]
    assert chat.first_difference(written, ids) is None


def test_template_check_catches_a_dropped_separator(chat_tok):
    """A template whose history drops the newline after a turn's role while its generation prompt
    writes it (the model saw one, the rendering has none) is not append-only: the trajectory's
    tokens differ from its whole rendering, first right after the first assistant header, found
    here by a plain comparison."""
    from agents.chat import ChatTokens

    good = chat_tok.chat_template
    bad = good.replace("{%- for m in messages %}<|im_start|>{{ m.role }}\n",
                       "{%- for m in messages %}<|im_start|>{{ m.role }}{% if m.role != 'assistant' %}{{ '\\n' }}{% endif %}")
    assert bad.count("m.role != 'assistant'") == 1
    chat_tok.chat_template = bad
    try:
        chat = ChatTokens(chat_tok, None)
        convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
        prompt = chat.prompt_ids(convo[:1])
        sampled = chat_tok("a", add_special_tokens=False).input_ids + [chat_tok.eos_token_id]
        ids = prompt + sampled + chat.reply_ids(convo[2:], sampled[-1])
        whole = chat_tok(chat_tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False).input_ids
        expected = next(i for i, (a, b) in enumerate(zip(ids, whole)) if a != b)
        assert chat.first_difference(convo, ids) == expected == len(prompt) - 1
        history = chat_tok(chat_tok.apply_chat_template(convo, tokenize=False), add_special_tokens=False).input_ids
        assert chat.first_difference(convo, history) is None
    finally:
        chat_tok.chat_template = good


def test_hermes_parser_reads_calls_and_flags_broken_ones(chat_tok):
    from agents.tool_calls import ToolCallParser

    parser = ToolCallParser("hermes", chat_tok)
    ok = parser.parse('<tool_call>{"name": "calculator", "arguments": {"expression": "1*2"}}</tool_call>')
    assert [c["function"] for c in ok["tool_calls"]] == [{"name": "calculator", "arguments": {"expression": "1*2"}}]
    broken = parser.parse('<tool_call>{"name": "calcul')
    assert "tool_calls" not in broken and "valid JSON" in broken["tool_call_error"]
    plain = parser.parse("408")
    assert plain == {"role": "assistant", "content": "408"}
    with pytest.raises(ValueError, match="not one of vLLM's tool parsers"):
        ToolCallParser("hermz", chat_tok)


def test_tools_fail_into_messages_and_the_runner_goes_on():
    from agents.tool_runner import ToolRunner

    runner = ToolRunner(f"{PLUGINS}:FaultyTools", max_workers=2, timeout_s=3.0, max_output_chars=1000)
    try:
        assert runner.call("fine", {"x": 1}) == ("ok 1", None)
        text, kind = runner.call("raises", {"x": 1})
        assert kind == "exception" and "ValueError: this tool always fails" in text
        text, kind = runner.call("hangs", {"x": 1})
        assert kind == "timeout" and "3 s" in text
        text, kind = runner.call("huge", {"x": 1})
        assert kind == "truncated" and text.startswith("y" * 1000) and len(text) < 1100
        text, kind = runner.call("number", {"x": 1})
        assert kind == "bad_type" and "int" in text
        text, kind = runner.call("fine", {"y": 1})
        assert kind == "bad_arguments"
        assert runner.call("fine", {"x": 2}) == ("ok 2", None)  # a hung worker was replaced
        # more hung calls than workers: each waiting call gets the place of a killed one
        with ThreadPoolExecutor(4) as pool:
            kinds = [kind for _, kind in pool.map(lambda _: runner.call("hangs", {"x": 1}), range(4))]
        assert kinds == ["timeout"] * 4 and runner.call("fine", {"x": 3}) == ("ok 3", None)
    finally:
        runner.close()


def test_tool_env_step_counts_every_kind(chat_tok):
    from agents.tool_runner import ToolRunner
    from env_plugins import FaultyTools

    env = FaultyTools({"prompt": "p", "answer": 1})
    env.tool_runner = ToolRunner(f"{PLUGINS}:FaultyTools", max_workers=1, timeout_s=5.0, max_output_chars=100)
    try:
        call = lambda name, args: {"function": {"name": name, "arguments": args}}
        turn = {"role": "assistant", "content": "x", "tool_calls": [call("fine", {"x": 1}), call("nope", {}),
                                                                      call("fine", "not json")]}
        replies, reward, done = env.step([turn])
        assert [r["content"] for r in replies][0] == "ok 1" and not done and reward is None
        assert "no tool named 'nope'" in replies[1]["content"] and "JSON object" in replies[2]["content"]
        replies, _, done = env.step([{"role": "assistant", "content": "<tool_call>{", "tool_call_error": "bad"}])
        assert not done and replies[0]["content"] == "error: bad"
        assert dict(env.tool_errors) == {"unknown_tool": 1, "bad_arguments": 1, "unparsable": 1}
        assert env.step([{"role": "assistant", "content": "done"}]) == ([], None, True)
    finally:
        env.tool_runner.close()


def test_environments_by_name():
    from agents.registry import PluginError, resolve_env

    assert resolve_env("calculator").calculator("12*34") == "408"
    assert resolve_env(f"{PLUGINS}:Planted").__name__ == "Planted"
    assert resolve_env("env_plugins:FaultyTools").__name__ == "FaultyTools"
    with pytest.raises(PluginError, match="path/to/file.py:name"):
        resolve_env("calculater")
    with pytest.raises(PluginError, match="Did you mean calculator"):
        resolve_env("calculater")
    with pytest.raises(PluginError, match="no class named 'Nope'"):
        resolve_env(f"{PLUGINS}:Nope")


def test_calculator_refuses_what_is_not_arithmetic():
    from agents.builtin.calculator import evaluate

    assert evaluate("(12+3)*-4 // 5 % 7") == (12 + 3) * -4 // 5 % 7
    for bad in ("__import__('os')", "2**999999", "1e9", "x", "9" * 13):
        with pytest.raises((ValueError, SyntaxError)):
            evaluate(bad)
