"""Loss statistics, clamps and rollout-mismatch corrections against hand-computed values and
plain loops, under every aggregation mode and both policy losses."""

import math

import pytest
import torch

from rlhf.algos.kl import clamp_kl, kl_estimate
from rlhf.algos.losses import AGGREGATIONS, PolicyLoss, normaliser
from rlhf.algos.rollout_correction import mis_keep, mismatch_metrics, tis_weights
from test_algos import B, L_MAX, T, aggregate_loop, batch, rows


def engine_reduce(loss_fn, lp, b, mode, world=2, micro=2):
    """The engine's recipe for stats: sum them over each rank's micro-batches, all-reduce (sum)
    over ranks, then `loss_fn.reduce` with the global normaliser."""
    norm = normaliser(b["response_mask"], mode, L_MAX)
    sums = {}
    for rank_rows in torch.arange(B).tensor_split(world):
        for idx in rank_rows.tensor_split(micro):
            loss_sum, stats = loss_fn({"logprobs": lp[idx]}, b[idx])
            for k, v in {"loss": loss_sum.detach(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    return loss_fn.reduce(sums, norm)


def per_sequence_advantages(b, seed):
    g = torch.Generator().manual_seed(seed)
    b["advantages"] = torch.randn(B, 1, generator=g).expand(B, T) * b["response_mask"]
    return b


def plain_clip_stats(lp, b, kind, low, high):
    """Share of response tokens where the clip is active, and the mean ratio, by a plain loop."""
    mask = b["response_mask"]
    clipped = total = ratio_sum = 0
    for i in range(B):
        idx = rows(mask, i)
        if kind == "gspo" and idx:
            s = math.exp(sum(lp[i, t].item() - b["old_logprobs"][i, t].item() for t in idx) / len(idx))
        for t in idx:
            r = s if kind == "gspo" else math.exp(lp[i, t].item() - b["old_logprobs"][i, t].item())
            a = b["advantages"][i, t].item()
            clipped += (a > 0 and r > 1 + high) or (a < 0 and r < 1 - low)
            ratio_sum += r
            total += 1
    return clipped / total, ratio_sum / total


@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("kind", ["ppo_clip", "gspo"])
def test_clip_frac_and_ratio_mean_are_token_means_under_every_aggregation(mode, kind):
    b = per_sequence_advantages(batch(21), 21)
    noise = torch.randn(B, T, generator=torch.Generator().manual_seed(21))
    lp = b["old_logprobs"] + noise * (0.4 if kind == "ppo_clip" else 0.3)
    low, high = (0.2, 0.28) if kind == "ppo_clip" else (0.05, 0.06)
    loss_fn = PolicyLoss(kind, low, high, aggregation=mode, log_ratio_clamp=20.0, seq_log_ratio_clamp=10.0)
    metrics = engine_reduce(loss_fn, lp, b, mode)
    frac, ratio = plain_clip_stats(lp, b, kind, low, high)
    assert 0.1 < frac < 0.9  # the clip is active on some tokens and not on others
    assert 0 <= metrics["actor/clip_frac"] <= 1
    assert abs(metrics["actor/clip_frac"] - frac) < 1e-6
    assert abs(metrics["actor/ratio_mean"] - ratio) < 1e-5
    assert metrics["actor/log_ratio_clamp_frac" if kind == "ppo_clip" else "actor/seq_log_ratio_clamp_frac"] == 0


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_gspo_matches_sequence_level_loop_and_gradient_under_every_aggregation(mode):
    """Every token carries its sequence's loss; the aggregation weighs tokens as for any loss.
    seq-mean-token-mean is the paper's mean over sequences (no second division by length)."""
    b = per_sequence_advantages(batch(11), 11)
    lp = (b["old_logprobs"] + torch.randn(B, T, generator=torch.Generator().manual_seed(11)) * 0.05).requires_grad_(True)
    low, high = 3e-3, 4e-3
    mask = b["response_mask"]
    norm = normaliser(mask, mode, L_MAX)
    total, _ = PolicyLoss("gspo", low, high, aggregation=mode)({"logprobs": lp}, b)

    def reference(lp_):
        per_token = [[] for _ in range(B)]
        for i in range(B):
            idx = rows(mask, i)
            if idx:
                s = torch.exp(sum(lp_[i, t] - b["old_logprobs"][i, t] for t in idx) / len(idx))
                a = b["advantages"][i, idx[0]]
                per_token[i] = [torch.maximum(-a * s, -a * s.clamp(1 - low, 1 + high))] * len(idx)
        seqs = [p for p in per_token if p]
        if mode == "token-mean":
            return sum(sum(p) for p in seqs) / sum(len(p) for p in seqs)
        if mode == "seq-mean-token-sum":
            return sum(sum(p) for p in seqs) / len(seqs)
        if mode == "seq-mean-token-mean":
            return sum(sum(p) / len(p) for p in seqs) / len(seqs)
        return sum(sum(p) for p in seqs) / (B * L_MAX)

    ref = reference(lp)
    assert abs(ref.item()) > 1e-3  # advantages are not all zero
    assert abs(total.item() / norm - ref.item()) < 1e-6
    (g_ours,) = torch.autograd.grad(total / norm, lp)
    (g_ref,) = torch.autograd.grad(ref, lp)
    assert g_ref.abs().max() > 1e-4
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


def one_row_batch(log_ratio: list[float], adv: float, ref_gap: float = 0.0):
    """One sequence: prompt token 0, response tokens 1..n with the given log(pi / pi_old)."""
    from tensordict import TensorDict

    n = len(log_ratio)
    mask = torch.tensor([[0.0] + [1.0] * n])
    old = torch.full((1, n + 1), -1.0)
    lp = old + torch.tensor([[0.0] + log_ratio])
    b = TensorDict({"response_mask": mask, "advantages": adv * mask, "old_logprobs": old,
                    "ref_logprobs": lp - ref_gap, "rollout_logprobs": old.clone()}, batch_size=[1])
    return lp, b


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_log_ratio_clamp_bounds_the_ppo_loss_and_counts_bites(mode):
    # token 1: log-ratio 30 with a negative advantage and no dual clip: the loss grows like exp(30).
    # A clamp of 3 (20 in the config) keeps the hand sum below readable at float32 precision.
    lp, b = one_row_batch([30.0, 0.1, -0.5, 0.0], adv=-1.0)
    lp.requires_grad_(True)
    loss_fn = PolicyLoss("ppo_clip", 0.2, 0.2, aggregation=mode, log_ratio_clamp=3.0)
    total, stats = loss_fn({"logprobs": lp}, b)
    norm = normaliser(b["response_mask"], mode, 4)
    w = 0.25 if mode == "seq-mean-token-mean" else 1.0
    # per token, with A = -1: max(r, clip(r, 0.8, 1.2)); token 3 (r = e^-0.5 = 0.61) is clipped to 0.8
    hand = w * (math.exp(3.0) + math.exp(0.1) + 0.8 + 1.0)
    assert abs(total.item() - hand) < 1e-5
    total.backward()
    assert lp.grad[0, 1] == 0 and lp.grad[0, 2] != 0  # no gradient through the clamped token
    metrics = loss_fn.reduce({"loss": total.item(), **{k: float(v) for k, v in stats.items()}}, norm)
    assert metrics["actor/log_ratio_clamp_frac"] == 0.25
    assert metrics["actor/clip_frac"] == 0.25
    assert abs(metrics["actor/ratio_mean"] - (math.exp(3.0) + math.exp(0.1) + math.exp(-0.5) + 1) / 4) < 1e-5
    unclamped, _ = PolicyLoss("ppo_clip", 0.2, 0.2, aggregation=mode)({"logprobs": lp.detach()}, b)
    assert unclamped.item() > 1e12


def test_k3_clamp_and_its_log_ratio_bound_keep_loss_and_gradient_finite():
    # log(pi / ref) = -15: k3 = e^15 - 1 - 15 = 3.27e6 unclamped; -100: e^100 overflows float32
    lp = torch.tensor([[0.0, -15.0, -100.0, 0.5]], requires_grad=True)
    ref = torch.zeros(1, 4)
    raw = kl_estimate(lp, ref, "k3")
    assert abs(raw[0, 1].item() - (math.exp(15) - 16)) / math.exp(15) < 1e-6 and math.isinf(raw[0, 2].item())
    kl, bites = clamp_kl(kl_estimate(lp, ref, "k3", log_ratio_clamp=20.0), 10.0)
    hand = [0.0, 10.0, 10.0, math.exp(-0.5) - 1 + 0.5]
    assert torch.allclose(kl, torch.tensor([hand]), atol=1e-6)
    assert bites.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    kl.sum().backward()
    assert torch.isfinite(lp.grad).all()
    assert lp.grad[0, 1] == 0 and lp.grad[0, 2] == 0
    assert abs(lp.grad[0, 3].item() - (1 - math.exp(-0.5))) < 1e-6  # d/dx (e^-x - 1 + x)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_kl_clamp_in_the_policy_loss_counts_token_share(mode):
    lp, b = one_row_batch([0.0, 0.0, 0.0, 0.0], adv=0.0)
    b["ref_logprobs"] = lp + torch.tensor([[0.0, 15.0, 0.0, 0.0, 30.0]])  # log(pi / ref) = -15, -30
    loss_fn = PolicyLoss("ppo_clip", 0.2, 0.2, aggregation=mode, kl_coef=0.5, kl_estimator="k3",
                         log_ratio_clamp=20.0, kl_clamp=10.0)
    total, stats = loss_fn({"logprobs": lp}, b)
    weights = 0.25 if mode == "seq-mean-token-mean" else 1.0
    assert abs(total.item() - 0.5 * weights * 20.0) < 1e-4  # two clamped tokens at 10, two at 0
    norm = normaliser(b["response_mask"], mode, 4)
    metrics = loss_fn.reduce({"loss": total.item(), **{k: float(v) for k, v in stats.items()}}, norm)
    assert metrics["actor/kl_clamp_frac"] == 0.5


def test_gspo_sequence_log_ratio_clamp():
    lp, b = one_row_batch([12.0, 12.0], adv=-1.0)  # sequence log-ratio 12 > 10
    lp.requires_grad_(True)
    loss_fn = PolicyLoss("gspo", 3e-4, 4e-4, aggregation="seq-mean-token-mean", seq_log_ratio_clamp=10.0)
    total, stats = loss_fn({"logprobs": lp}, b)
    assert abs(total.item() - math.exp(10.0)) / math.exp(10.0) < 1e-6  # -A * e^10, the mean of 2 equal tokens
    total.backward()
    assert (lp.grad == 0).all()
    assert stats["actor/seq_log_ratio_clamp_frac"].item() == 2.0  # summed tokens; reduce divides by 2


# --- rollout-vs-trainer mismatch ------------------------------------------------------------

def test_mismatch_metrics_hand_computed():
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    rollout = torch.tensor([[0.0, -1.0, -2.0, 5.0], [0.0, -0.5, 9.0, 9.0]])
    old = torch.tensor([[0.0, -1.2, -1.5, -7.0], [0.0, -0.5, 0.0, 0.0]])
    d = [-0.2, 0.5, 0.0]  # old - rollout on the three response tokens
    m = mismatch_metrics(rollout, old, mask)
    assert abs(m["rollout/mismatch_kl_k1"] - sum(-x for x in d) / 3) < 1e-6
    assert abs(m["rollout/mismatch_kl_k3"] - sum(math.exp(x) - 1 - x for x in d) / 3) < 1e-6
    assert abs(m["rollout/mismatch_ratio_max"] - math.exp(0.5)) < 1e-6
    assert abs(m["rollout/mismatch_ratio_min"] - math.exp(-0.2)) < 1e-6


def test_tis_weights_and_mis_keep_hand_computed():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    rollout = torch.zeros(1, 4)
    old = torch.tensor([[math.log(3.0), math.log(0.5), 0.0, 50.0]])
    w, truncated = tis_weights(old, rollout, mask, cap=2.0)
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 1.0, 0.0]]))
    assert truncated.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    # sequence ratios: 3 (out), 1.5 (in), 0.25 (out), 1 (empty response: in)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    old = torch.tensor([[math.log(1.5), math.log(2.0)], [math.log(1.5), 7.0], [math.log(0.5), math.log(0.5)], [3.0, 3.0]])
    keep = mis_keep(old, torch.zeros(4, 2), mask, low=0.5, high=2.0)
    assert keep.tolist() == [False, True, False, True]


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_tis_multiplies_each_policy_gradient_term(mode):
    b = batch(31)
    g = torch.Generator().manual_seed(31)
    b["rollout_logprobs"] = b["old_logprobs"] + torch.randn(B, T, generator=g) * 0.8
    lp = b["old_logprobs"] + torch.randn(B, T, generator=g) * 0.3
    total, _ = PolicyLoss("ppo_clip", 0.2, 0.28, aggregation=mode, tis_cap=2.0)({"logprobs": lp}, b)
    mask = b["response_mask"]
    per_token = torch.zeros(B, T)
    for i in range(B):
        for t in rows(mask, i):
            r = math.exp(lp[i, t].item() - b["old_logprobs"][i, t].item())
            a = b["advantages"][i, t].item()
            w = min(math.exp(b["old_logprobs"][i, t].item() - b["rollout_logprobs"][i, t].item()), 2.0)
            per_token[i, t] = w * max(-a * r, -a * min(max(r, 0.8), 1.28))
    ref = aggregate_loop(per_token, mask, mode)
    assert abs(total.item() / normaliser(mask, mode, L_MAX) - ref) < 1e-5


def test_tis_on_policy_weighs_by_the_training_forward_against_the_rollout():
    """With one update per batch the old log-probs are the training forward's own: every ratio is
    1, and each token's policy-gradient term is -A * min(exp(logprob - rollout), cap)."""
    b = batch(32)
    g = torch.Generator().manual_seed(32)
    lp = b["old_logprobs"] + torch.randn(B, T, generator=g) * 0.3
    b["rollout_logprobs"] = lp + torch.randn(B, T, generator=g) * 0.8
    del b["old_logprobs"]
    total, stats = PolicyLoss("ppo_clip", 0.2, 0.28, tis_cap=2.0, on_policy=True)({"logprobs": lp}, b)
    mask = b["response_mask"]
    per_token = torch.zeros(B, T)
    for i in range(B):
        for t in rows(mask, i):
            w = min(math.exp(lp[i, t].item() - b["rollout_logprobs"][i, t].item()), 2.0)
            per_token[i, t] = -b["advantages"][i, t].item() * w
    ref = aggregate_loop(per_token, mask, "token-mean")
    assert abs(total.item() / normaliser(mask, "token-mean", L_MAX) - ref) < 1e-5
    assert stats["actor/clip_frac"].item() == 0
