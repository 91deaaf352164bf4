"""The reference workload's model: a random Qwen2 of Qwen2.5-0.5B's shape, built from a config.

Benchmarks compare systems on this model without any download: its weights are random
(`from_config` under a fixed seed, saved in bf16) and its tokenizer is the project's tiny
byte-level BPE trained on the built-in arithmetic task, so the prompts are the built-in task's.
The model's vocabulary (151,936) is far larger than the tokenizer's (257 tokens): a random
model mostly samples ids the tokenizer does not know, and decoding drops them. That is intended;
rewards on this workload must not depend on the decoded text making sense.

    python benchmarks/reference_model.py OUT_DIR [--shape qwen2.5-0.5b|qwen2.5-7b|qwen3-moe-tiny|tiny] [--layers N]

The benchmarks build it once per shape under `.work/benchmarks/models/` (`ensure`).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from rlhf.config import load_config
from rlhf.data.arithmetic import corpus, make_splits
from rlhf.data.rows import Row
from rlhf.data.tiny_model import build_tokenizer

SEED = 0
SHAPES = {
    # Qwen2.5-0.5B's config.json, less its weights.
    "qwen2.5-0.5b": {
        "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "intermediate_size": 4864, "vocab_size": 151936, "max_position_embeddings": 32768,
    },
    # Qwen2.5-7B's config.json, less its weights (its head is not tied).
    "qwen2.5-7b": {
        "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "intermediate_size": 18944, "vocab_size": 152064, "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
    },
    # A small random Qwen3-MoE (8 experts, 2 per token): Automodel's own MoE model class on GPU,
    # for expert parallelism (actor.ep_size) and the weight export of routed experts.
    "qwen3-moe-tiny": {
        "model_type": "qwen3_moe", "hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 4, "head_dim": 64, "intermediate_size": 1024, "moe_intermediate_size": 256,
        "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True, "decoder_sparse_step": 1,
        "vocab_size": 32768, "max_position_embeddings": 32768, "tie_word_embeddings": False,
    },
    # Small enough to run the scripts on a CPU; head_dim 64 as above (vLLM's CPU attention has
    # no kernel for some smaller ones). Its vocabulary is still larger than the tokenizer's,
    # but a quarter of the samples are known tokens, so even 8-token responses get rewards that vary.
    "tiny": {
        "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 512, "vocab_size": 1024, "max_position_embeddings": 32768,
    },
}


def task_problems() -> tuple[list[Row], list[Row]]:
    """The built-in task's train and held-out problems, as the default config makes them."""
    cfg = load_config([])
    return make_splits(cfg.seed, cfg.task.max_operand, cfg.task.ops, cfg.task.num_eval, cfg.task.demo_carry_error)


def build(out_dir: str | Path, shape: str = "qwen2.5-0.5b", layers: int | None = None, chat: bool = False) -> str:
    """Write the HF folder (config, bf16 safetensors, generation config, tokenizer); return its path.
    `layers`: fewer decoder layers than the shape has (a model too large for the machine at hand).
    `chat`: the tokenizer of the built-in tool task instead (a chat template with tool calls, for
    multi-turn benchmarks; its end of turn ends a sample)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r} is not one of {', '.join(SHAPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if chat:
        from rlhf.data import arithmetic_tools

        train, held_out = arithmetic_tools.make_splits(SEED, 999, 2000, 64, 0.5, True)
        tok = build_tokenizer(arithmetic_tools.corpus(train + held_out), out, chat=True)
    else:
        train, held_out = task_problems()
        tok = build_tokenizer(corpus(train + held_out), out)
    eos = tok.eos_token_id
    spec = {"model_type": "qwen2", "tie_word_embeddings": True, **SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})}
    config = AutoConfig.for_model(
        spec.pop("model_type"),
        **spec,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        rms_norm_eps=1e-6,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(torch.bfloat16)
    # Only the special ids: no sampling defaults that vLLM would silently apply.
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model.save_pretrained(out)
    return str(out)


def models_dir() -> Path:
    """Where the benchmarks keep their models: under the work folder (`RLHF_WORK`, default `.work/`)."""
    root = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("RLHF_WORK", root / ".work")) / "benchmarks" / "models"


def ensure(shape: str = "qwen2.5-0.5b", layers: int | None = None, folder: str | Path | None = None,
           chat: bool = False) -> str:
    """The model folder of `shape` (and `layers`), built there first if missing; default folder: one
    per shape under models_dir(). Built aside and renamed, so an interrupted build leaves no folder
    that looks complete."""
    out = Path(folder) if folder else models_dir() / (shape + (f"-{layers}-layers" if layers else "") + ("-chat" if chat else ""))
    if (out / "config.json").is_file():
        return str(out)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    build(tmp, shape, layers, chat)
    try:
        tmp.rename(out)
    except OSError:  # built meanwhile by another process (theirs is identical), or a stale folder
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():
            raise RuntimeError(f"{out} exists but holds no model (no config.json): remove it and run again") from None
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers than the shape has")
    parser.add_argument("--chat", action="store_true", help="the tool task's chat tokenizer (multi-turn benchmarks)")
    args = parser.parse_args()
    print(build(args.out_dir, args.shape, args.layers, args.chat))


if __name__ == "__main__":
    main()
