"""Algorithm math against independent references: closed forms and plain loops written here."""

import math

import torch
from tensordict import TensorDict

from rlhf.algos.advantages import broadcast_to_tokens, grpo
from rlhf.algos.kl import kl_estimate
from rlhf.algos.losses import PPOClipLoss, SFTLoss


def test_grpo_hand_computed():
    # one group of 4: rewards 1,0,0,1 -> mean .5, sample std sqrt(1/3)
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = grpo(scores, groups, norm_by_std=True, eps=1e-6)
    s = math.sqrt(1 / 3) + 1e-6
    expected = [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0.0, 0.0]
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-6)


def test_grpo_matches_loop_on_random_groups():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (40,), generator=g).float()
    groups = torch.randperm(40, generator=g) % 5  # interleaved, unequal order
    for norm in (True, False):
        adv = grpo(scores, groups, norm_by_std=norm, eps=1e-6)
        for i in range(40):
            members = [scores[j].item() for j in range(40) if groups[j] == groups[i]]
            mean = sum(members) / len(members)
            var = sum((m - mean) ** 2 for m in members) / (len(members) - 1)
            ref = scores[i].item() - mean
            if norm:
                ref /= math.sqrt(var) + 1e-6
            assert abs(adv[i].item() - ref) < 1e-5


def test_broadcast_to_tokens_masks():
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.float32)
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), mask)
    assert out.tolist() == [[0, 2, 2, 0], [0, 0, 0, 0]]


def test_kl_estimators_closed_form():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    r = [0.5, -1.0]
    assert torch.allclose(kl_estimate(lp, ref, "k1"), torch.tensor(r))
    assert torch.allclose(kl_estimate(lp, ref, "k2"), torch.tensor([x * x / 2 for x in r]))
    assert torch.allclose(kl_estimate(lp, ref, "k3"), torch.tensor([math.exp(-x) - 1 + x for x in r]))
    assert (kl_estimate(torch.randn(100), torch.randn(100), "k3") >= 0).all()


def _batch(B=6, T=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T)
    for i in range(B):  # include an empty and a full-length response
        start = int(torch.randint(1, T, (1,), generator=g)) if i not in (0, 1) else (T if i == 0 else 1)
        mask[i, start:] = 1
    return TensorDict(
        {
            "response_mask": mask,
            "advantages": torch.randn(B, T, generator=g) * mask,
            "old_logprobs": -torch.rand(B, T, generator=g) * 3,
            "ref_logprobs": -torch.rand(B, T, generator=g) * 3,
        },
        batch_size=[B],
    )


def test_ppo_clip_matches_loop():
    b = _batch()
    lp = b["old_logprobs"] + torch.randn(b["old_logprobs"].shape) * 0.4
    loss_fn = PPOClipLoss(clip_low=0.2, clip_high=0.28, kl_coef=0.1, kl_estimator="k3")
    total, stats = loss_fn(lp, b)
    ref_total, ref_clipped = 0.0, 0.0
    B, T = lp.shape
    for i in range(B):
        for t in range(T):
            if b["response_mask"][i, t] == 0:
                continue
            ratio = math.exp(lp[i, t].item() - b["old_logprobs"][i, t].item())
            a = b["advantages"][i, t].item()
            clipped_ratio = min(max(ratio, 0.8), 1.28)
            pg = max(-a * ratio, -a * clipped_ratio)
            ref_clipped += float(-a * clipped_ratio > -a * ratio)
            x = lp[i, t].item() - b["ref_logprobs"][i, t].item()
            ref_total += pg + 0.1 * (math.exp(-x) - 1 + x)
    assert abs(total.item() - ref_total) < 1e-4
    assert abs(stats["actor/clip_frac"].item() - ref_clipped) < 1e-6


def test_ppo_gradient_is_policy_gradient_on_policy():
    # On-policy (ratio 1, no clipping active): d loss / d logprob = -advantage on each token.
    b = _batch(seed=3)
    lp = b["old_logprobs"].clone().requires_grad_(True)
    total, _ = PPOClipLoss(0.2, 0.2)(lp, b)
    total.backward()
    assert torch.allclose(lp.grad, -b["advantages"] * b["response_mask"], atol=1e-6)


def test_sft_loss_is_masked_nll():
    b = _batch(seed=5)
    lp = -torch.rand(b["response_mask"].shape)
    total, _ = SFTLoss()(lp, b)
    assert abs(total.item() - sum(-lp[i, t].item() for i in range(6) for t in range(7) if b["response_mask"][i, t])) < 1e-5
