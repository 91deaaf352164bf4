"""Per-token quantities every engine computes the same way, in the batch layout of `core.batch`
(column t holds the value for token t, predicted from the tokens before it; column 0 is 0).

They are taken in float32 whatever the compute dtype: the rollout-vs-trainer gap and PPO's
ratios are differences of log-probs, and bf16 log-softmax alone moves them by ~1e-2. Neither
materialises float32 logits for a whole micro-batch: on CUDA, log-probs come from two fused
Triton kernels (`engines.triton_logprobs`, one read of the logits each way); elsewhere, and for
entropy, rows are taken in float32 chunks. Logits that tensor parallelism left split over the
vocabulary give their log-probs without being gathered (`_VocabParallelLogprobs`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard

_CHUNK_BYTES = 1 << 28  # float32 working set per chunk of rows (256 MiB)


def _rows_per_chunk(width: int) -> int:
    """Rows of `width` columns whose float32 copy fits in one chunk."""
    return max(1, _CHUNK_BYTES // (4 * max(width, 1)))

try:
    from engines.triton_logprobs import FusedLogprobs
except ImportError:  # no Triton (the CPU install): the chunked version serves
    FusedLogprobs = None


class _ChunkedLogprobs(torch.autograd.Function):
    """log softmax(logits)[target] row by row in float32 chunks, forward and backward.

    A whole micro-batch's float32 log-softmax (rows x a 150k vocabulary) would take several times
    the memory of the bf16 logits it comes from; here only one chunk is ever in float32, and
    backward keeps just the logits and one logsumexp per row."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        rows = _rows_per_chunk(logits.shape[-1])
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for s in range(0, logits.shape[0], rows):
            chunk = logits[s:s + rows].float()
            lse[s:s + rows] = torch.logsumexp(chunk, -1)
            out[s:s + rows] = chunk.gather(-1, target[s:s + rows, None]).squeeze(-1) - lse[s:s + rows]
        ctx.save_for_backward(logits, target, lse)
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, target, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.rows):
            e = s + ctx.rows
            # d log p[target] / d logits = onehot(target) - softmax(logits)
            g = (logits[s:e].float() - lse[s:e, None]).exp_().neg_()
            g.scatter_add_(-1, target[s:e, None], torch.ones_like(lse[s:e, None]))
            grad[s:e] = g.mul_(grad_out[s:e, None])
        return grad, None


class _VocabParallelLogprobs(torch.autograd.Function):
    """log softmax(logits)[target] where each rank of `group` holds the vocabulary columns
    [offset, offset + width) of every row: a max, a sum of exponentials and the target's logit
    (from the rank holding it) are all-reduced, one float per row each, instead of the logits.
    The result is the same on every rank; backward needs no communication, since each rank's
    columns get onehot(target) - softmax there, times the incoming gradient."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, target: torch.Tensor, offset: int, group) -> torch.Tensor:
        n, width = local.shape
        rows = _rows_per_chunk(width)
        top = torch.full((n,), -float("inf"), dtype=torch.float32, device=local.device)
        for s in range(0, n if width else 0, rows):
            top[s:s + rows] = local[s:s + rows].float().amax(-1)
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        total = torch.zeros_like(top)
        for s in range(0, n if width else 0, rows):
            total[s:s + rows] = (local[s:s + rows].float() - top[s:s + rows, None]).exp_().sum(-1)
        dist.all_reduce(total, group=group)
        lse = top + total.log()
        here = (target >= offset) & (target < offset + width)
        column = (target - offset).clamp(0, max(width - 1, 0))
        picked = torch.zeros_like(top)
        if width:
            picked = torch.where(here, local.gather(-1, column[:, None]).squeeze(-1).float(), picked)
        dist.all_reduce(picked, group=group)
        ctx.save_for_backward(local, lse, column, here)
        ctx.rows = rows
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        local, lse, column, here = ctx.saved_tensors
        grad = torch.empty_like(local)
        for s in range(0, local.shape[0] if local.shape[1] else 0, ctx.rows):
            e = s + ctx.rows
            g = (local[s:e].float() - lse[s:e, None]).exp_().neg_()
            g.scatter_add_(-1, column[s:e, None], here[s:e, None].float())
            grad[s:e] = g.mul_(grad_out[s:e, None])
        return grad, None, None, None


def vocab_offset(logits: torch.Tensor) -> int | None:
    """For logits split over the vocabulary on a one-dimensional mesh (tensor parallelism's LM
    head), the index of this rank's first column; None for any other tensor or layout."""
    if not isinstance(logits, DTensor) or logits.device_mesh.ndim != 1:
        return None
    (placement,) = logits.placements
    if not (isinstance(placement, Shard) and placement.dim in (-1, logits.ndim - 1)):
        return None
    mesh, vocab = logits.device_mesh, logits.shape[-1]
    chunk = -(-vocab // mesh.size())  # DTensor splits a dimension as torch.chunk does
    offset = min(mesh.get_local_rank() * chunk, vocab)
    return offset if logits.to_local().shape[-1] == min(chunk, vocab - offset) else None


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Column t gets log p(input_ids[t] | < t); column 0 gets 0 (no prediction for it). Logits
    may be a DTensor (tensor parallelism): split over the vocabulary, they are not gathered."""
    b, t, v = logits.shape
    # Row (i, t) of the logits predicts token t + 1; the last row of each sequence predicts
    # nothing and is dropped (computing it costs less than copying the logits without it).
    target = torch.roll(input_ids, -1, dims=1).reshape(-1)
    offset = vocab_offset(logits)
    if offset is not None:
        # to_local is differentiable: the gradient comes back in the same DTensor layout
        local, group = logits.to_local(), logits.device_mesh.get_group()
        picked = _VocabParallelLogprobs.apply(local.reshape(b * t, -1), target, offset, group).view(b, t)
    else:
        if isinstance(logits, DTensor):
            logits = logits.full_tensor()
        fn = FusedLogprobs if FusedLogprobs is not None and logits.is_cuda else _ChunkedLogprobs
        picked = fn.apply(logits.reshape(b * t, v), target).view(b, t)
    return torch.nn.functional.pad(picked[:, :-1], (1, 0))


class _ChunkedEntropy(torch.autograd.Function):
    """-sum p log p of softmax(logits) row by row in float32 chunks, forward and backward
    (d H / d x_j = -p_j (log p_j + H)); backward keeps the logits and two floats per row."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor) -> torch.Tensor:
        rows = _rows_per_chunk(logits.shape[-1])
        ent = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(ent)
        for s in range(0, logits.shape[0], rows):
            chunk = logits[s:s + rows].to(torch.float32, copy=True)  # a copy: worked on in place
            lse[s:s + rows] = torch.logsumexp(chunk, -1)
            logp = chunk.sub_(lse[s:s + rows, None])
            ent[s:s + rows] = -(logp.exp() * logp).sum(-1)
        ctx.save_for_backward(logits, lse, ent)
        ctx.rows = rows
        return ent

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, lse, ent = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.rows):
            e = s + ctx.rows
            logp = logits[s:e].to(torch.float32, copy=True).sub_(lse[s:e, None])
            grad[s:e] = logp.exp().mul_(logp.add_(ent[s:e, None])).mul_(-grad_out[s:e, None])
        return grad


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Column t gets the entropy of the distribution that predicted token t (same layout)."""
    b, t, v = logits.shape
    ent = _ChunkedEntropy.apply(logits.reshape(b * t, v)).view(b, t)
    return torch.nn.functional.pad(ent[:, :-1], (1, 0))


def token_values(scores: torch.Tensor) -> torch.Tensor:
    """A value head's [B, T, 1] output in the log-prob layout: V at column t values the state
    before token t, i.e. the head's output at position t-1."""
    return torch.nn.functional.pad(scores[:, :-1, 0].float(), (1, 0))
