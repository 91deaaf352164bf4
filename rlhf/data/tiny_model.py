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


def build_tokenizer(texts: list[str], out_dir: Path):
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
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
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


def ensure_tiny_model(cache_dir: str | os.PathLike, texts: list[str], arch: dict, seed: int) -> str:
    """Build (once) and return the folder of the default model for these texts and this shape.

    The folder name hashes everything that determines its content, so a changed task or shape
    builds a new folder instead of silently reusing a stale one.
    """
    key = hashlib.sha256(json.dumps([sorted(set(texts)), arch, seed], sort_keys=True).encode()).hexdigest()[:12]
    out = Path(cache_dir) / f"tiny-qwen2-{key}"
    if (out / "config.json").exists():
        return str(out)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(texts, tmp)
    vocab = len(tok)
    build_model(vocab_size=-(-vocab // 64) * 64, eos_id=tok.eos_token_id, arch=arch, seed=seed, out_dir=tmp)
    try:
        tmp.rename(out)
    except OSError:  # another process built it first; theirs is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)
