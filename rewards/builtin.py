"""Built-in reward functions, selectable by name (`reward.fn=<name>`)."""

from __future__ import annotations

import json
import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def exact_match(prompt: str, response: str, ground_truth, **extra) -> float:
    """1.0 when the response, stripped of surrounding whitespace, is exactly the answer.

    The reward of the built-in arithmetic task, whose answers are plain integers.
    """
    return float(response.strip() == str(ground_truth).strip())


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def _final_number(text: str) -> str | None:
    """GSM8K convention: the number after '####', else the last number in the text."""
    tail = text.split("####")[-1] if "####" in text else text
    found = _NUMBER.findall(tail)
    return found[-1].replace(",", "").rstrip(".") if found else None


def math_answer(prompt: str, response: str, ground_truth, **extra) -> dict:
    """Math answers: a `\\boxed{}` answer checked for equivalence with `math-verify`, else the
    final number (GSM8K style) compared numerically. No answer at all scores 0."""
    truth = str(ground_truth)
    boxed = _last_boxed(response)
    if boxed is not None:
        from math_verify import parse, verify

        gold = parse(f"${_last_boxed(truth) or truth}$")
        pred = parse(f"${boxed}$")
        return {"reward": float(bool(gold) and bool(pred) and verify(gold, pred)), "has_answer": 1.0}
    number = _final_number(response)
    if number is None:
        return {"reward": 0.0, "has_answer": 0.0}
    gold_number = _final_number(truth)
    try:
        ok = gold_number is not None and abs(float(number) - float(gold_number)) < 1e-6
    except ValueError:
        ok = False
    return {"reward": float(ok), "has_answer": 1.0}


def format_match(prompt: str, response: str, ground_truth, *, pattern: str, full: bool = True, **extra) -> float:
    """1.0 when the response matches a regular expression (whole response if `full`)."""
    match = re.fullmatch(pattern, response, re.DOTALL) if full else re.search(pattern, response, re.DOTALL)
    return float(match is not None)


def length_penalty(prompt: str, response: str, ground_truth, *, max_chars: int, per_char: float = 0.01, **extra) -> float:
    """0 up to `max_chars`, then minus `per_char` for each character beyond (add it with a weight)."""
    return -per_char * max(0, len(response) - max_chars)


_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def code_tests(prompt: str, response: str, ground_truth, *, timeout_s: float = 5.0, memory_mb: int = 512, **extra) -> dict:
    """Runs the response's code (the last fenced block, else the whole response) against test
    statements (`ground_truth`: a list of Python statements, e.g. asserts) in the sandbox.
    The reward is the fraction of tests that pass."""
    from rewards.sandbox import SandboxLimits, run_python

    tests = json.loads(ground_truth) if isinstance(ground_truth, str) else list(ground_truth)
    blocks = _CODE_BLOCK.findall(response)
    code = blocks[-1] if blocks else response
    harness = (
        code
        + "\n\nimport json as _json\n_passed = 0\n"
        + "".join(
            f"try:\n    exec({t!r})\n    _passed += 1\nexcept BaseException:\n    pass\n" for t in tests
        )
        + "print('__RLHF_RESULT__' + _json.dumps(_passed))\n"
    )
    result = run_python(harness, SandboxLimits(timeout_s=timeout_s, memory_bytes=memory_mb << 20))
    passed = 0
    for line in result.stdout.splitlines():
        if line.startswith("__RLHF_RESULT__"):
            passed = int(line[len("__RLHF_RESULT__") :])
    return {"reward": passed / max(len(tests), 1), "sandbox_ok": float(result.status == "ok")}


_REWARD_MODELS: dict = {}


def reward_model(prompts, responses, ground_truths, extras, *, path: str, max_length: int = 512, batch_size: int = 32):
    """A Hugging Face sequence-classification model's score of prompt + response (its first
    logit), computed in the reward worker, which loads the model once."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if path not in _REWARD_MODELS:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()
        _REWARD_MODELS[path] = (tok, model)
    tok, model = _REWARD_MODELS[path]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    scores = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            ids = [tok(p + r, truncation=True, max_length=max_length).input_ids for p, r in
                   zip(prompts[i : i + batch_size], responses[i : i + batch_size])]
            width = max(map(len, ids))
            input_ids = torch.tensor([x + [pad_id] * (width - len(x)) for x in ids])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
            scores.extend(model(input_ids=input_ids, attention_mask=mask).logits[:, 0].tolist())
    return scores


reward_model.batched = True

BUILTINS = {
    "exact_match": exact_match,
    "arithmetic": exact_match,
    "math_answer": math_answer,
    "format_match": format_match,
    "length_penalty": length_penalty,
    "code_tests": code_tests,
    "reward_model": reward_model,
}
