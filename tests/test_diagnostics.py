"""Run diagnostics against hand-computed cases and plain loops written here."""

import random

import torch

from rlhf.algos.diagnostics import between_group_share, explained_variance


def test_explained_variance_hand_computed():
    mask = torch.tensor([[0.0, 1, 1], [1, 1, 0]])
    returns = torch.tensor([[9.0, 1, 3], [5, 7, 9]])  # masked: 1, 3, 5, 7 (mean 4, var 20/3)
    assert abs(explained_variance(returns, returns.clone(), mask) - 1.0) < 1e-6
    assert abs(explained_variance(returns, torch.full_like(returns, 4.0), mask)) < 1e-6
    # residuals 1-2, 3-2, 5-6, 7-6 = -1, 1, -1, 1: var 4/3 -> 1 - (4/3)/(20/3) = 0.8
    values = torch.tensor([[0.0, 2, 2], [6, 6, 0]])
    assert abs(explained_variance(returns, values, mask) - 0.8) < 1e-6
    assert explained_variance(torch.ones(2, 3), torch.zeros(2, 3), mask) == 0.0  # nothing to explain


def test_between_group_share_matches_anova_loop():
    rng = random.Random(0)
    for trial in range(20):
        groups, n = rng.randint(2, 6), rng.randint(2, 5)
        scores = [[float(rng.random() < p) if trial % 2 else rng.gauss(p, 1) for _ in range(n)]
                  for p in (rng.random() for _ in range(groups))]
        flat = [s for g in scores for s in g]
        N, mean = len(flat), sum(flat) / len(flat)
        total = sum((s - mean) ** 2 for s in flat) / (N - 1)
        within = sum((s - sum(g) / n) ** 2 for g in scores for s in g) / (N - groups)
        expected = 1 - within / total if total > 0 else 0.0
        ids = torch.tensor([i for i in range(groups) for _ in range(n)])
        got = between_group_share(torch.tensor(flat), ids)
        assert abs(got - expected) < 1e-5, (trial, got, expected)


def test_between_group_share_extremes():
    ids = torch.tensor([0, 0, 1, 1])
    assert abs(between_group_share(torch.tensor([1.0, 1, 0, 0]), ids) - 1.0) < 1e-6  # all between
    # equal group means: the within variance (1/2) exceeds the total (1/3): no between share
    assert between_group_share(torch.tensor([1.0, 0, 1, 0]), ids) < 0
    assert between_group_share(torch.ones(4), ids) == 0.0
