"""The embedded default model: a byte-level BPE tokenizer trained on the task's text and a
tiny Qwen2 built from a config, written as an ordinary HF folder.

Everything downstream loads it with the real HF loading code (`AutoTokenizer`,
`AutoModelForCausalLM`, vLLM), so a user's own checkpoint folder takes exactly the same path.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# Qwen2's own pre-tokenizer split: transformers' Qwen2Tokenizer rebuilds it on load, so the
# tokenizer must be trained with it or ids would differ between training and loading.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
EOS = "<|endoftext|>"
# A ChatML template with Hermes-style tool calls (as Qwen2.5's), compact enough for a 128-token
# context: tools are listed by name and parameters in a system turn, a tool call is
# <tool_call>{"name": ..., "arguments": {...}}</tool_call>, a tool's answer is a `tool` turn.
CHAT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools:{% for t in tools %} {{ t.function.name }}("
    "{{ t.function.parameters.properties | list | join(', ') }}){% endfor %}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{% if m.content %}{{ m.content }}{% endif %}"
    "{%- for c in m.tool_calls or [] %}<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments}"
    " | tojson }}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_SPECIAL = ["<|im_start|>", "<|im_end|>"]
CHAT_ADDED = ["<tool_call>", "</tool_call>"]


def build_tokenizer(texts: list[str], out_dir: Path, chat: bool = False):
    """`chat`: with CHAT_TEMPLATE, its markers as single tokens and `<|im_end|>` as end of sequence
    (a chat model stops at the end of its turn)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=[EOS] + (CHAT_SPECIAL if chat else []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    if chat:
        tok.add_tokens(CHAT_ADDED)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=CHAT_SPECIAL[1] if chat else EOS, pad_token=EOS)
    if chat:
        hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(out_dir)
    return hf


def build_model(vocab_size: int, eos_id: int, arch: dict, seed: int, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=vocab_size,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        dtype="float32",
        **arch,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = eos_id
    model.save_pretrained(out_dir)


def ensure_tiny_model(cache_dir: str | os.PathLike, texts: list[str], arch: dict, seed: int, chat: bool = False) -> str:
    """Build (once) and return the folder of the default model for these texts and this shape.

    The folder name hashes everything that determines its content, so a changed task or shape
    builds a new folder instead of silently reusing a stale one.
    """
    what = [sorted(set(texts)), arch, seed] + ([CHAT_TEMPLATE, CHAT_SPECIAL, CHAT_ADDED] if chat else [])
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(cache_dir) / f"tiny-qwen2{'-chat' if chat else ''}-{key}"
    if (out / "config.json").exists():
        return str(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(texts, tmp, chat)
    vocab = len(tok)
    build_model(vocab_size=-(-vocab // 64) * 64, eos_id=tok.eos_token_id, arch=arch, seed=seed, out_dir=tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process built it first; theirs is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)
