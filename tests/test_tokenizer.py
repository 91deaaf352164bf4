"""The embedded tokenizer: AutoTokenizer, vLLM's tokenizer loader and the raw trained tokenizer agree."""

from pathlib import Path

import tokenizers
from transformers import AutoTokenizer


def test_three_tokenizers_agree_on_all_task_text(task, tiny_model):
    from vllm.tokenizers.registry import get_tokenizer

    _, (train, held_out) = task
    hf = AutoTokenizer.from_pretrained(tiny_model)
    vl = get_tokenizer(tiny_model)
    raw = tokenizers.Tokenizer.from_file(str(Path(tiny_model) / "tokenizer.json"))
    texts = [p.prompt for p in train + held_out] + [p.prompt + p.answer for p in held_out] + ["  7 + 8 = 15\n"]
    for text in texts:
        ids = hf(text).input_ids
        assert ids == vl.encode(text) == raw.encode(text).ids, text
        assert hf.decode(ids) == text
    # digits stay single tokens (Qwen2's split), so answers are spelled digit by digit
    assert len(hf("12345").input_ids) == 5
