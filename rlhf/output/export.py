"""The run's result as one Hugging Face folder, `checkpoints/final`: safetensors weights, model
config, generation config and the tokenizer with its chat template, loadable as is by
`transformers` and vLLM."""

from __future__ import annotations

from pathlib import Path


def export_final(actor, tokenizer, dest: Path) -> Path:
    """Write the actor's current weights (the last stage's policy) and the run's tokenizer to `dest`."""
    from transformers import AutoConfig, GenerationConfig

    actor.all("save", str(dest))
    tokenizer.save_pretrained(dest)
    if not (dest / "generation_config.json").is_file():
        gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(dest))
        if gen.eos_token_id is None:
            gen.eos_token_id = tokenizer.eos_token_id
        gen.save_pretrained(dest)
    return dest
