import pytest

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
