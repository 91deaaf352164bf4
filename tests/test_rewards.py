import math

import pytest

from rewards.manager import RewardManager
from rewards.registry import RewardResolutionError, resolve


def test_builtin_and_dotted_and_file_paths(tmp_path):
    assert resolve("arithmetic")("1+2=", " 3 ", "3") == 1.0
    assert resolve("arithmetic")("1+2=", "4", "3") == 0.0
    assert resolve("rewards.builtin:exact_match") is resolve("exact_match")
    f = tmp_path / "my_reward.py"
    f.write_text("def score(prompt, response, ground_truth, **kw):\n    return {'reward': len(response), 'len': 2.0}\n")
    fn = resolve(f"{f}:score")
    assert fn("p", "abc", None) == {"reward": 3, "len": 2.0}


def test_unknown_names_explain():
    with pytest.raises(RewardResolutionError, match="exact_match"):
        resolve("exact_mtch")
    with pytest.raises(RewardResolutionError, match="no callable 'nope'"):
        resolve("rewards.builtin:nope")


def test_manager_counts_failures_and_continues():
    def fn(prompt, response, ground_truth, **extra):
        if response == "raise":
            raise RuntimeError("boom")
        if response == "nan":
            return math.nan
        if response == "str":
            return "high"
        return {"reward": 1.0, "fmt": 0.5}

    m = RewardManager(fn, fallback=-1.0)
    rewards, named, errors = m.score(["p"] * 5, ["ok", "raise", "nan", "str", "ok"], [None] * 5)
    assert rewards == [1.0, -1.0, -1.0, -1.0, 1.0]
    assert errors == {"exception": 1, "non_finite": 1, "bad_type": 1}
    assert named == {"reward/fmt": pytest.approx(0.5)}
    assert "boom" in m.first_traceback
