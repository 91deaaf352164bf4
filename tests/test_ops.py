"""The shared per-token ops against plain float64 log-softmax: values and gradients, in float32
and bf16, with chunks smaller than the batch so the chunk boundaries are crossed."""

import pytest
import torch
from references import float64_token_logprobs

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

    ref, ref_grad = float64_token_logprobs(logits, ids, weight)

    assert ours.dtype == torch.float32 and ours.shape == (5, 6) and (ours[:, 0] == 0).all()
    assert (ours.double() - ref).abs().max() < tol
    assert logits.grad.dtype == dtype
    assert (logits.grad.double() - ref_grad).abs().max() < tol
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


def _vocab_parallel_rank(rank: int, port: int, dtype: torch.dtype, tol: float) -> None:
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        g = torch.Generator().manual_seed(0)  # the same full logits on both ranks
        full = (torch.randn(3, 5, 51, generator=g) * 3).to(dtype)  # 51 columns: 26 on rank 0, 25 on rank 1
        ids = torch.randint(0, 51, (3, 5), generator=g)
        weight = torch.randn(3, 5, generator=g)
        sharded = distribute_tensor(full, mesh, [Shard(-1)]).requires_grad_()
        assert ops.vocab_offset(sharded) == 26 * rank  # the vocabulary-parallel path, not a gather
        ours = ops.token_logprobs(sharded, ids)
        (ours * weight).sum().backward()
        grad = sharded.grad.full_tensor()

        ref, ref_grad = float64_token_logprobs(full, ids, weight)
        assert not isinstance(ours, type(sharded)) and ours.dtype == torch.float32
        assert (ours.double() - ref).abs().max() < tol
        assert grad.dtype == dtype and (grad.double() - ref_grad).abs().max() < tol
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_token_logprobs_from_logits_split_over_the_vocabulary(dtype, tol):
    """Two gloo ranks, each holding half of the vocabulary columns (tensor parallelism's LM head):
    log-probs and gradients without gathering the logits, against a float64 log-softmax of the
    whole. Targets fall in both halves."""
    import torch.multiprocessing as mp
    from torch.distributed.elastic.utils.distributed import get_free_port

    mp.spawn(_vocab_parallel_rank, args=(get_free_port(), dtype, tol), nprocs=2)
