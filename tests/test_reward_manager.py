"""Reward plugins that raise, hang, return NaN or strings, or kill their own process are
counted and replaced by the fallback; the manager keeps going; an error-rate breach stops it."""

import time
from pathlib import Path

import pytest
import torch

from rewards.manager import RewardErrorRateExceeded, RewardManager, RewardSpec

PLUGINS = str(Path(__file__).with_name("reward_plugins.py"))
N = 6


def manager(*names, **kw):
    args = dict(fallback=-1.0, timeout_s=1.0, num_workers=2, max_error_rate=1.0)
    args.update(kw)
    return RewardManager([RewardSpec(f"{PLUGINS}:{n}") for n in names], **args)


@pytest.mark.parametrize(
    "name, kind",
    [("raises", "exception"), ("sleeps", "timeout"), ("nan", "non_finite"), ("string", "bad_type"), ("suicide", "crashed")],
)
def test_broken_plugin_is_counted_and_the_pool_recovers(name, kind):
    m = manager(name)
    try:
        t = time.time()
        out = m.score(["p"] * N, ["r"] * N, ["a"] * N)
        assert out.rewards == [-1.0] * N and all(out.failed)
        assert out.errors == {kind: N}
        if kind == "timeout":  # 2 workers, 6 hung calls, 1 s each: killed on time, not after 60 s
            assert time.time() - t < 15
        if kind == "exception":
            assert "this plugin always fails" in m.first_tracebacks["exception"]
        # the same pool, its workers replaced, still serves (the broken function fails again, counted again)
        again = m.score(["p"], ["r"], ["a"])
        assert again.errors == {kind: 1} and m.errors[kind] == N + 1
    finally:
        m.close()


def test_good_plugin_and_named_scores_and_weights():
    m = RewardManager([RewardSpec(f"{PLUGINS}:good", 2.0), RewardSpec("exact_match", 0.5)],
                      fallback=0.0, timeout_s=5, num_workers=2, max_error_rate=0.0)
    try:
        out = m.score(["1+1=", "2+2="], ["2", "5"], ["2", "4"])
        assert out.rewards == [2.5, 0.0] and out.failed == [False, False] and out.errors == {}
        assert out.named["reward/length"] == 1.0 and out.named["reward/good"] == 0.5
    finally:
        m.close()


def test_mixed_batch_only_marks_the_failing_samples():
    m = manager("flaky", fallback=0.0)
    try:
        prompts = [f"{i}+0=" for i in range(64)]
        out = m.score(prompts, [str(i) for i in range(64)], [str(i) for i in range(64)])
        expected_fail = [i % 2 == 0 for i in range(64)]
        assert out.failed == expected_fail
        assert out.rewards == [0.0 if f else 1.0 for f in expected_fail]
    finally:
        m.close()


def test_error_rate_limit_stops_with_a_clear_message():
    m = manager("raises", max_error_rate=0.25, min_samples_for_rate=4)
    try:
        with pytest.raises(RewardErrorRateExceeded) as e:
            m.score(["p"] * 8, ["r"] * 8, ["a"] * 8)
        text = str(e.value)
        assert "reward.max_error_rate=0.25" in text and "exception: 8" in text and "always fails" in text
    finally:
        m.close()


def test_reward_model_scores_like_a_plain_hf_forward(tmp_path, tiny_model):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model, num_labels=1)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_config(config)
    rm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(tmp_path / "rm")
    m = RewardManager([RewardSpec("reward_model", 1.0, {"path": str(tmp_path / "rm")})],
                      fallback=0.0, timeout_s=60, num_workers=2, max_error_rate=0.0)
    try:
        prompts, responses = ["1+2=", "10+20=", "3+4="], ["3", "30", "8"]
        out = m.score(prompts, responses, [None] * 3)
    finally:
        m.close()
    tok = AutoTokenizer.from_pretrained(tmp_path / "rm")
    with torch.no_grad():
        ref = [rm(**tok(p + r, return_tensors="pt")).logits[0, 0].item() for p, r in zip(prompts, responses)]
    assert out.errors == {} and out.rewards == pytest.approx(ref, abs=1e-5)


def test_a_conversation_reaches_only_functions_that_take_it():
    convo = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "t"},
             {"role": "assistant", "content": "b"}]
    for name, want in (("strict", 1.0), ("turns", 2.0), ("counts_extra", 4.0)):
        m = manager(name)
        try:
            out = m.score(["p"], ["b"], ["a"], [{"messages": convo}])
            assert out.errors == {} and out.rewards == [want], name
        finally:
            m.close()
