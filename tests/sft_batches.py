"""SFT batches of the built-in task, shared by the engine tests."""

from transformers import AutoTokenizer

from core.batch import pack


def sft_batches(tiny_model, task, n, size=8):
    """`n` batches of `size` task rows (prompt, answer + EOS as the response), in order."""
    _, (train, _) = task
    tok = AutoTokenizer.from_pretrained(tiny_model)
    return [pack([tok(p.prompt).input_ids for p in train[size * s: size * s + size]],
                 [tok(p.answer).input_ids + [tok.eos_token_id] for p in train[size * s: size * s + size]],
                 tok.eos_token_id) for s in range(n)]
