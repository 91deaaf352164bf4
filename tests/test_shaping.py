"""The RL step's batch transformations against loops written here, and none changes its input."""

import math

import torch
from tensordict import TensorDict

from rlhf.algos import shaping


def batch() -> TensorDict:
    g = torch.Generator().manual_seed(0)
    lengths = [0, 3, 5, 6, 6, 2]
    mask = torch.tensor([[0.0] * 2 + [1.0] * n + [0.0] * (6 - n) for n in lengths])
    return TensorDict({
        "response_mask": mask, "scores": torch.tensor([1.0, 0.0, 1.0, 0.5, 0.0, 1.0]),
        "group_ids": torch.tensor([0, 0, 1, 1, 2, 2]), "reward_failed": torch.tensor([False, False, False, True, False, False]),
        "truncated": torch.tensor([False, False, False, True, True, False]),
        "old_logprobs": -torch.rand(6, 8, generator=g), "rollout_logprobs": -torch.rand(6, 8, generator=g),
    }, batch_size=[6])


def test_overlong_penalty_ramps_down_over_the_buffer():
    b = batch()
    before = b["scores"].clone()
    out = shaping.overlong_penalty(b.clone(), buffer=4, max_new_tokens=6)
    for i, n in enumerate([0, 3, 5, 6, 6, 2]):
        assert math.isclose(float(out["scores"][i]), float(before[i]) + min(0.0, max(-1.0, (2 - n) / 4)))
    assert torch.equal(shaping.overlong_penalty(b, 0, 6)["scores"], before)


def test_samples_leave_the_loss_and_the_input_is_untouched():
    b = batch()
    mask = b["response_mask"].clone()
    failed = shaping.drop_failed_groups(b.clone())
    assert [bool(r.any()) for r in failed["response_mask"]] == [False, True, False, False, True, True]
    cut = shaping.drop_truncated(b.clone())
    assert [bool(r.any()) for r in cut["response_mask"]] == [False, True, True, False, False, True]
    assert torch.equal(b["response_mask"], mask)


def test_mismatched_sequences_leave_the_loss():
    b = batch()
    out, dropped = shaping.drop_mismatched(b.clone(), 0.5, 2.0)
    want = []
    for i in range(6):
        s = sum(float(b["old_logprobs"][i, t] - b["rollout_logprobs"][i, t]) for t in range(8) if b["response_mask"][i, t])
        want.append(0.5 <= math.exp(s) <= 2.0)
    assert [bool(r.any()) for r in out["response_mask"]] == [w and bool(m.any()) for w, m in zip(want, b["response_mask"])]
    assert math.isclose(dropped, sum(not w for w, m in zip(want, b["response_mask"]) if m.any()) / 5, rel_tol=1e-6)
