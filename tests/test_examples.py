"""The examples stay runnable without running them: each `examples/*/run.sh`'s overrides pass the
config check, its files read with the project's loader into the rows the files hold, and every row
fits the lengths the script sets (a row over them would be dropped, not refused)."""

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p.parent.name for p in (ROOT / "examples").glob("*/run.sh"))
FINAL = re.compile(r"#### (-?\d+)$")


def _overrides(example: str) -> list[str]:
    """The key=value arguments run.sh gives `python -m rlhf.main` (continuation lines joined)."""
    text = (ROOT / "examples" / example / "run.sh").read_text().replace("\\\n", " ")
    command = next(line for line in text.splitlines() if "-m rlhf.main" in line)
    return [a for a in shlex.split(command.split("-m rlhf.main", 1)[1]) if a != "$@"]


def _records(path: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / path).read_text().splitlines() if line.strip()]


@pytest.fixture
def example(request, monkeypatch):
    """The example's checked config and its rows, read as the run reads them (from the repository root)."""
    from rlhf.config import load_config
    from rlhf.data.sources import load_data

    monkeypatch.chdir(ROOT)
    cfg = load_config(_overrides(request.param))
    return cfg, load_data(cfg.data, cfg.task, cfg.seed, tools=cfg.agent.env is not None)


def test_every_example_has_a_run_script():
    assert {"gsm8k", "gsm8k_tools"} <= set(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, indirect=True)
def test_rows_are_read_as_written(example):
    cfg, data = example
    assert len(cfg.data.train_files) == 1 and len(cfg.data.eval_files) == 1
    for path, rows in [(cfg.data.train_files[0], data.train), (cfg.data.eval_files[0], next(iter(data.evals.values())))]:
        records = _records(path)
        assert [r.prompt for r in rows] == [r["question"] for r in records]
        assert [r.answer for r in rows] == [r["answer"] for r in records]
        assert all(FINAL.search(r.answer) for r in rows), "every answer ends in '#### N'"
        assert all(r.response == r.answer or r.messages is not None for r in rows)


@pytest.mark.parametrize("example", ["gsm8k_tools"], indirect=True)
def test_tool_demonstrations_call_the_tool_and_answer_with_its_output(example):
    """The SFT conversations: the question, a python call, the tool's output (what the code prints,
    run here plainly), and the answer's final number; beside rows without a conversation."""
    from agents.registry import resolve_env

    cfg, data = example
    tools = {t["function"]["name"] for t in resolve_env(cfg.agent.env).tools}
    demos = [r for r in data.train if r.messages is not None]
    assert 0 < len(demos) < len(data.train), "conversations and plain rows mixed in one file"
    for row in demos:
        user, call, result, answer = row.messages
        assert [m["role"] for m in row.messages] == ["user", "assistant", "tool", "assistant"]
        assert user["content"] == row.prompt
        (tool_call,) = call["tool_calls"]
        assert tool_call["function"]["name"] in tools
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(tool_call["function"]["arguments"]["code"], {})
        assert printed.getvalue().strip() == result["content"] == FINAL.search(row.answer).group(1)
        assert FINAL.search(answer["content"]).group(1) == result["content"]


@pytest.mark.parametrize("example", EXAMPLES, indirect=True)
def test_every_row_fits_the_scripts_lengths(example, tmp_path):
    """Rendered as the run renders them (the embedded model's tokenizer for these texts, the
    environment's tools in every prompt), no prompt, SFT example or eval prompt is dropped."""
    from agents.registry import resolve_env
    from rlhf.data.render import Renderer, keep_fitting
    from rlhf.data.tiny_model import build_tokenizer

    cfg, data = example
    tools = resolve_env(cfg.agent.env).tools if cfg.agent.env else None
    tok = build_tokenizer(data.texts, tmp_path, chat=tools is not None)
    renderer = Renderer(tok, cfg.data.chat_template, cfg.data.system_prompt, tools)
    limit, width = cfg.prompt_limit(), cfg.rollout.max_model_len
    for rows, sft in [(data.train, True)] + [(rows, False) for rows in data.evals.values()]:
        kept = keep_fitting(rows, renderer, limit, width, sft=sft)
        assert (kept.long_prompts, kept.long_examples) == (0, 0)
