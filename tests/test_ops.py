"""The shared per-token ops against plain float64 log-softmax: values and gradients, in float32
and bf16, with chunks smaller than the batch so the chunk boundaries are crossed."""

import pytest
import torch

import engines.ops as ops


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_token_logprobs_match_float64_log_softmax(monkeypatch, dtype, tol):
    monkeypatch.setattr(ops, "_CHUNK_BYTES", 4 * 50 * 7)  # 7 rows per chunk, 5 sequences x 6 rows
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 6, 50, generator=g) * 3).to(dtype).requires_grad_()
    ids = torch.randint(0, 50, (5, 6), generator=g)
    weight = torch.randn(5, 6, generator=g)

    ours = ops.token_logprobs(logits, ids)
    (ours * weight).sum().backward()

    ref_logits = logits.detach().double().requires_grad_()
    lp = torch.log_softmax(ref_logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    ref = torch.nn.functional.pad(lp, (1, 0))
    (ref * weight.double()).sum().backward()

    assert ours.dtype == torch.float32 and ours.shape == (5, 6) and (ours[:, 0] == 0).all()
    assert (ours.double() - ref).abs().max() < tol
    assert logits.grad.dtype == dtype
    assert (logits.grad.double() - ref_logits.grad).abs().max() < tol
    assert logits.grad[:, -1].abs().max() == 0  # the last position predicts nothing


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_token_entropy_matches_float64_softmax(monkeypatch, dtype, tol):
    monkeypatch.setattr(ops, "_CHUNK_BYTES", 4 * 50 * 7)  # 7 rows per chunk, 5 sequences x 6 rows
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(5, 6, 50, generator=g) * 3).to(dtype).requires_grad_()
    weight = torch.randn(5, 6, generator=g)

    ours = ops.token_entropy(logits)
    (ours * weight).sum().backward()

    ref_logits = logits.detach().double().requires_grad_()
    p = torch.softmax(ref_logits[:, :-1], -1)
    ref = torch.nn.functional.pad(-(p * p.log()).sum(-1), (1, 0))
    (ref * weight.double()).sum().backward()

    assert ours.dtype == torch.float32 and ours.shape == (5, 6) and (ours[:, 0] == 0).all()
    assert (ours.double() - ref).abs().max() < tol
    assert logits.grad.dtype == dtype
    assert (logits.grad.double() - ref_logits.grad).abs().max() < tol
    assert logits.grad[:, -1].abs().max() == 0  # the last position's distribution is not used
