"""The data layer: files read through HF `datasets` into rows, bad rows named precisely, prompts
rendered with a chat template, and the SFT loss mask of a conversation (assistant turns only)."""

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf.algos.losses import SFTLoss
from core.batch import pack_masked
from rlhf.config import load_config
from rlhf.data.files import load_rows
from rlhf.data.render import Renderer, keep_fitting
from rlhf.data.rows import DataError, Row

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ROWS = [
    {"question": "What is 2+3?", "answer": "#### 5", "response": "2+3=5 #### 5", "level": 1},
    {"question": "What is 7+8?", "answer": "#### 15", "response": "7+8=15 #### 15", "level": 2},
]


def _data(*overrides):
    return load_config(["data.prompt_key=question", *overrides]).data


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_parquet_and_saved_folder_give_the_same_rows(tmp_path):
    import datasets

    table = datasets.Dataset.from_list(ROWS)
    table.to_parquet(str(tmp_path / "d.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    data = _data("data.extra_keys=[level]")
    expected = [Row(r["question"], r["answer"], r["response"], None, {"level": r["level"]}) for r in ROWS]
    for source in (_jsonl(tmp_path / "d.jsonl", ROWS), str(tmp_path / "d.parquet"), str(tmp_path / "saved")):
        rows = load_rows(source, data)
        assert [(r.prompt, r.answer, r.response, r.messages, r.extra) for r in rows] == \
            [(r.prompt, r.answer, r.response, r.messages, r.extra) for r in expected], source
        assert rows[1].origin == f"{source}, row 2"


def test_a_hub_download_is_read_through_glob_patterns_shard_by_shard(tmp_path):
    """The layout `huggingface-cli download --repo-type dataset` writes: splits as shards in a
    config folder. A pattern reads a split's shards in name order; the folder itself is refused
    with the pattern to give instead."""
    import datasets

    from rlhf.data.sources import load_data

    more = [{"question": f"What is {i}+1?", "answer": f"#### {i + 1}", "response": "r", "level": i} for i in range(5)]
    main = tmp_path / "hub" / "main"
    main.mkdir(parents=True)
    (tmp_path / "hub" / "README.md").write_text("---\nconfigs: []\n---\n")
    shards = [ROWS, more[:3], more[3:]]  # written out of name order: the pattern must sort them
    for i in (2, 0, 1):
        datasets.Dataset.from_list(shards[i]).to_parquet(str(main / f"train-{i:05d}-of-00003.parquet"))
    datasets.Dataset.from_list(ROWS[:1]).to_csv(str(main / "test-00000-of-00001-a09b74b3ef9c3b56.csv"), index=False)  # an older upload's name

    data = _data("data.extra_keys=[level]")
    rows = load_rows(str(main / "train-*.parquet"), data)
    assert [r.prompt for r in rows] == [r["question"] for shard in shards for r in shard]
    assert [r.extra["level"] for r in rows] == [r["level"] for shard in shards for r in shard]
    assert rows[2].origin == f"{main / 'train-00001-of-00003.parquet'}, row 1"
    loaded = load_data(load_config([
        "data.prompt_key=question", f"data.train_files=[{main}/train-*.parquet]",
        f"data.eval_files=[{main}/test-*.csv]"]).data, None, 0)
    assert len(loaded.train) == 7 and list(loaded.evals) == ["test"]
    assert [(r.prompt, r.answer) for r in loaded.evals["test"]] == [(ROWS[0]["question"], ROWS[0]["answer"])]

    with pytest.raises(DataError, match=r"not one written by datasets' save_to_disk.*e\.g\. .*main/test-\*\.csv"):
        load_rows(str(tmp_path / "hub"), data)
    with pytest.raises(DataError, match=r"validation-\*\.parquet matches no file"):
        load_rows(str(main / "validation-*.parquet"), data)


def test_csv_cells_stay_text_and_names_with_glob_characters_are_files(tmp_path):
    """pandas would read "007" as 7.0, "True" as a bool and "NA" as null: a CSV row arrives as
    written. A file whose real name has [ or * in it is read as itself, not as a pattern."""
    (tmp_path / "a.csv").write_text("question,answer,level\n12,007,NA\nTrue,2.50,\n")
    rows = load_rows(str(tmp_path / "a.csv"), _data("data.extra_keys=[level]"))
    assert [(r.prompt, r.answer, r.extra["level"]) for r in rows] == [("12", "007", "NA"), ("True", "2.50", "")]
    odd = _jsonl(tmp_path / "[v2]train*.jsonl", ROWS)
    assert [r.prompt for r in load_rows(odd, _data())] == [r["question"] for r in ROWS]


@pytest.mark.parametrize("rows, overrides, must_name", [
    ([{"q": "x", "answer": "1"}], [], ["row 1", "'question'", "data.prompt_key", "columns are: answer, q"]),
    ([{"question": "a", "answer": "1"}, {"question": "  ", "answer": "2"}], [], ["row 2", "'question'", "empty"]),
    ([{"question": "a", "answer": "1"}, {"question": None, "answer": "2"}], [], ["row 2", "'question'", "null"]),
    ([{"question": 17, "answer": "1"}], [], ["row 1", "'question'", "must be a string, got int"]),
    ([{"question": "a", "answer": "1"}], ["data.extra_keys=[tests]"], ["'tests'", "data.extra_keys"]),
    ([{"question": "a", "answer": ""}], [], ["row 1", "'answer'", "ground truth is empty"]),
    ([{"question": "a", "answer": "1", "messages": [{"role": "bot", "content": "hi"}]}], [],
     ["row 1", "'messages'", "message 0", "role"]),
])
def test_malformed_rows_name_the_file_row_and_column(tmp_path, rows, overrides, must_name):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_rows(path, _data(*overrides))
    for s in [path, *must_name]:
        assert s in str(e.value), (s, str(e.value))


def test_unreadable_empty_and_missing_files(tmp_path):
    data = _data()
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"question": "a", "answer": "1"}\n{"question": "b", "answer": \n')
    with pytest.raises(DataError, match=r"broken.jsonl.*row 2 is not valid JSON"):
        load_rows(str(bad), data)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError, match="could not read data file .*garbage.parquet"):
        load_rows(str(garbage), data)
    for name, content in [("empty.jsonl", ""), ("blank.jsonl", "\n\n")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=f"{name} is empty"):
            load_rows(str(tmp_path / name), data)
    with pytest.raises(DataError, match="does not exist"):
        load_rows(str(tmp_path / "nope.jsonl"), data)
    with pytest.raises(DataError, match="unknown format '.xlsx'"):
        (tmp_path / "x.xlsx").write_text("a,b\n")
        load_rows(str(tmp_path / "x.xlsx"), data)
    with pytest.raises(DataError, match="header.csv has no rows"):
        (tmp_path / "header.csv").write_text("question,answer\n\n")
        load_rows(str(tmp_path / "header.csv"), data)


def test_the_config_check_refuses_the_columns_the_full_read_refuses_without_datasets(tmp_path):
    """`check_columns` (run by the config check) judges each format from its schema, header or first
    JSON rows; its verdict on every column setting equals the full read's (`load_rows`, through
    `datasets`), and it never imports `datasets`."""
    import subprocess
    import sys

    import datasets

    table = datasets.Dataset.from_list(ROWS)
    late = [{k: v for k, v in ROWS[0].items() if k != "level"}, ROWS[1]]  # a JSON column first seen in row 2
    sources = [_jsonl(tmp_path / "d.jsonl", ROWS), _jsonl(tmp_path / "late.jsonl", late), str(tmp_path / "d.parquet"),
               str(tmp_path / "d.csv"), str(tmp_path / "saved"), str(tmp_path / "list.json")]
    table.to_parquet(sources[2])
    table.to_csv(sources[3], index=False)
    table.save_to_disk(sources[4])
    (tmp_path / "list.json").write_text(json.dumps(ROWS, indent=1))  # a JSON list: left to the full read
    settings = [["data.extra_keys=[level]"], ["data.prompt_key=questoin"], ["data.answer_key=anser"],
                ["data.extra_keys=[lvl]"], ["data.answer_key=answer.value"]]
    cases = [(source, overrides) for source in sources for overrides in settings]
    child = ("import json, sys; from rlhf.config import load_config; from rlhf.data.files import check_columns\n"
             "out = []\n"
             f"for source, overrides in {cases!r}:\n"
             "    try:\n"
             "        check_columns(source, load_config(['data.prompt_key=question', *overrides]).data); out.append(None)\n"
             "    except ValueError as e:\n"
             "        out.append(str(e))\n"
             "print(json.dumps([out, 'datasets' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    verdicts, imported = json.loads(proc.stdout.splitlines()[-1])
    assert not imported
    refused = 0
    for (source, overrides), verdict in zip(cases, verdicts):
        try:
            load_rows(source, _data(*overrides))
            full = None
        except DataError as e:
            full = str(e) if "no column" in str(e) or "no field" in str(e) else None
        if source.endswith("list.json"):
            assert verdict is None
        else:
            assert verdict == full, (source, overrides)
            refused += verdict is not None
    assert refused == 20  # four wrong keys in each of five files


def test_the_config_check_refuses_empty_files_and_several_splits(tmp_path):
    import datasets

    from rlhf.data.files import check_columns

    data = _data()
    (tmp_path / "blank.jsonl").write_text("\n\n")
    (tmp_path / "header.csv").write_text("question,answer\n")
    datasets.Dataset.from_list(ROWS).select([]).to_parquet(str(tmp_path / "none.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS)}).save_to_disk(
        str(tmp_path / "both"))
    for name, words in [("blank.jsonl", "is empty"), ("header.csv", "has no rows"), ("none.parquet", "has no rows"),
                        ("both", "holds several splits (train, test); give the split's own folder")]:
        with pytest.raises(DataError, match=re.escape(words)):
            check_columns(str(tmp_path / name), data)
        with pytest.raises(DataError, match=re.escape(words)):
            load_rows(str(tmp_path / name), data)


@pytest.fixture(scope="module")
def chat_tok(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = CHATML
    return tok


def _ids(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_prompt_rendering_with_and_without_the_chat_template(chat_tok):
    row = Row("2+3=", "5", "5")
    prompt = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+3=<|im_end|>\n<|im_start|>assistant\n"
    assert Renderer(chat_tok, True, "Be brief.").prompt_ids(row) == _ids(chat_tok, prompt)
    ids, mask = Renderer(chat_tok, True, "Be brief.").sft_example(row)
    assert ids == _ids(chat_tok, prompt) + _ids(chat_tok, "5<|im_end|>\n")
    assert mask == [0] * len(_ids(chat_tok, prompt)) + [1] * len(_ids(chat_tok, "5<|im_end|>\n"))
    # chat_template=false (or a tokenizer without one): plain text, the response ended by eos
    plain = Renderer(chat_tok, False, None)
    assert plain.prompt_ids(row) == chat_tok("2+3=").input_ids
    assert plain.sft_example(row) == (chat_tok("2+3=").input_ids + _ids(chat_tok, "5") + [chat_tok.eos_token_id],
                                      [0] * len(chat_tok("2+3=").input_ids) + [1, 1])


def test_multi_turn_loss_counts_only_assistant_tokens(chat_tok, tiny_model):
    messages = [{"role": "system", "content": "Add."}, {"role": "user", "content": "2+3="},
                {"role": "assistant", "content": "5"}, {"role": "user", "content": "7+8="},
                {"role": "assistant", "content": "15"}]
    # the rendering written out by hand: (text, is the model's to learn)
    pieces = [("<|im_start|>system\nAdd.<|im_end|>\n<|im_start|>user\n2+3=<|im_end|>\n<|im_start|>assistant\n", 0),
              ("5<|im_end|>\n", 1), ("<|im_start|>user\n7+8=<|im_end|>\n<|im_start|>assistant\n", 0),
              ("15<|im_end|>\n", 1)]
    want_ids = [t for text, _ in pieces for t in _ids(chat_tok, text)]
    want_mask = [m for text, m in pieces for _ in _ids(chat_tok, text)]
    ids, mask = Renderer(chat_tok, True, None).sft_example(Row("7+8=", None, None, messages))
    assert (ids, mask) == (want_ids, want_mask)
    assert chat_tok.decode([t for t, m in zip(ids, mask) if m]) == "5<|im_end|>\n15<|im_end|>\n"
    # the SFT loss on that batch is the NLL of exactly those tokens, by a plain loop over a HF forward
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    batch = pack_masked([(ids, mask)], chat_tok.eos_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits[0]
        lp = torch.log_softmax(logits[:-1], -1).gather(-1, batch["input_ids"][0, 1:, None])[:, 0]
        loss, _ = SFTLoss()({"logprobs": torch.nn.functional.pad(lp, (1, 0))[None]}, batch)
    by_hand = -sum(float(torch.log_softmax(logits[t - 1], -1)[ids[t]]) for t in range(len(ids)) if want_mask[t])
    assert abs(float(loss) - by_hand) < 1e-4
    # a conversation's prompt for generation is every turn before its last assistant turn
    assert Renderer(chat_tok, True, None).prompt_ids(Row("7+8=", None, None, messages)) == want_ids[: len(
        _ids(chat_tok, pieces[0][0]) + _ids(chat_tok, pieces[1][0]) + _ids(chat_tok, pieces[2][0]))]


def test_verl_and_trl_conversational_rows_render_their_whole_prompt_and_learn_only_the_completion(tmp_path, chat_tok):
    """verl's parquet layout (prompt: a list of messages, the ground truth in the struct column
    reward_model) and TRL's conversational prompt-completion rows, read as they are."""
    import datasets

    few_shot = [{"role": "system", "content": "Add."}, {"role": "user", "content": "2+3="},
                {"role": "assistant", "content": "5"}, {"role": "user", "content": "7+8="}]
    rows = [{"prompt": few_shot, "completion": [{"role": "assistant", "content": "15"}],
             "reward_model": {"ground_truth": "15", "style": "rule"}, "data_source": "add"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "verl.parquet"))
    [row] = load_rows(str(tmp_path / "verl.parquet"), _data(
        "data.prompt_key=prompt", "data.answer_key=reward_model.ground_truth", "data.response_key=completion",
        "data.extra_keys=[data_source]"))
    assert (row.prompt, row.answer, row.response, row.extra, row.messages) == ("7+8=", "15", "15", {"data_source": "add"}, None)
    # by hand: the whole prompt conversation, few-shot answer included, then the generation prompt
    prompt = ("<|im_start|>system\nAdd.<|im_end|>\n<|im_start|>user\n2+3=<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
              "<|im_start|>user\n7+8=<|im_end|>\n<|im_start|>assistant\n")
    renderer = Renderer(chat_tok, True, "ignored: the prompt has its own system turn")
    assert renderer.prompt_ids(row) == _ids(chat_tok, prompt)
    ids, mask = renderer.sft_example(row)
    assert ids == _ids(chat_tok, prompt) + _ids(chat_tok, "15<|im_end|>\n")
    assert chat_tok.decode([t for t, m in zip(ids, mask) if m]) == "15<|im_end|>\n"  # not the few-shot "5"
    # a prompt without a system turn gets data.system_prompt, as a plain prompt does
    plain = Row("7+8=", "15", context=few_shot[3:])
    assert Renderer(chat_tok, True, "Be brief.").prompt_ids(plain) == Renderer(chat_tok, True, "Be brief.").prompt_ids(
        Row("7+8=", "15"))


def test_struct_fields_are_checked_by_the_schema_and_absent_ones_reach_rewards_as_none(tmp_path):
    import datasets

    rows = [{"prompt": "q1", "rm": None}, {"prompt": "q2", "rm": {"gt": "2", "meta": None}},
            {"prompt": "q3", "rm": {"gt": "3", "meta": {"idx": 7}}}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "s.parquet"))
    # row 1's struct is null: the key is still right (the schema has it), and that row's value is None
    got = load_rows(str(tmp_path / "s.parquet"), _data("data.prompt_key=prompt", "data.answer_key=null",
                                                       "data.extra_keys=[rm.gt, rm.meta.idx]"))
    assert [r.extra for r in got] == [{"rm.gt": None, "rm.meta.idx": None}, {"rm.gt": "2", "rm.meta.idx": None},
                                      {"rm.gt": "3", "rm.meta.idx": 7}]
    with pytest.raises(DataError, match="row 1, column 'rm.gt': the ground truth is empty"):
        load_rows(str(tmp_path / "s.parquet"), _data("data.prompt_key=prompt", "data.answer_key=rm.gt"))
    with pytest.raises(DataError, match=r"no field 'idz' in 'rm.meta' \(data.answer_key=rm.meta.idz\); its fields are: idx"):
        load_rows(str(tmp_path / "s.parquet"), _data("data.prompt_key=prompt", "data.answer_key=rm.meta.idz"))


@pytest.mark.parametrize("record, overrides, must_name", [
    ({"prompt": "q", "reward_model": {"ground_truth": "1", "style": "rule"}}, ["data.answer_key=reward_model.ground_truht"],
     ["no field 'ground_truht' in 'reward_model'", "its fields are: ground_truth, style"]),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": "1"}, [],
     ["row 1", "'prompt'", "ends with an assistant turn", "data.messages_key"]),
    ({"prompt": [{"role": "system", "content": "s"}], "answer": "1"}, [], ["row 1", "'prompt'", "no user turn"]),
    ({"prompt": "q", "answer": "1", "completion": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]},
     ["data.response_key=completion"], ["row 1", "'completion'", "one assistant message, got 2"]),
])
def test_bad_conversational_rows_and_struct_fields_are_named(tmp_path, record, overrides, must_name):
    path = _jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(DataError) as e:
        load_rows(path, _data("data.prompt_key=prompt", *overrides))
    for s in [path, *must_name]:
        assert s in str(e.value), (s, str(e.value))


def test_conversations_need_a_template_and_sft_needs_a_target(chat_tok):
    convo = Row("hi", None, None, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], {}, "f, row 3")
    with pytest.raises(DataError, match="f, row 3: a conversation .* needs a tokenizer with a chat template"):
        Renderer(chat_tok, False, None).sft_example(convo)
    prompt_only = Row("hi", None, context=[{"role": "user", "content": "hi"}], origin="f, row 5")
    with pytest.raises(DataError, match="f, row 5: a conversational prompt .* needs a tokenizer with a chat template"):
        Renderer(chat_tok, False, None).prompt_ids(prompt_only)
    with pytest.raises(DataError, match="f, row 5: SFT needs a target"):
        Renderer(chat_tok, True, None).sft_example(prompt_only)
    with pytest.raises(DataError, match="f, row 4: SFT needs a target"):
        Renderer(chat_tok, True, None).sft_example(Row("q", "a", origin="f, row 4"))


def test_over_long_prompts_are_dropped_and_counted(chat_tok):
    rows = [Row("1+1=", "2", "2"), Row("1+1=" * 30, "2", "2"), Row("3+4=", "7", "7" * 40)]
    plain = Renderer(chat_tok, False, None)
    limit = len(plain.prompt_ids(rows[0])) + 2
    kept = keep_fitting(rows, plain, limit, max_len=20, sft=True)
    assert (kept.rows, kept.long_prompts, kept.long_examples) == ([rows[0]], 1, 1)
    kept = keep_fitting(rows, plain, limit, max_len=20, sft=False)  # RL / eval: only the prompt counts
    assert (kept.rows, kept.long_prompts) == ([rows[0], rows[2]], 1)
