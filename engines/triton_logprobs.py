"""Token log-probs from logits in two fused Triton kernels, for CUDA.

The chunked PyTorch version (`engines.ops`) makes about ten passes over a float32 copy of each
chunk of logits, forward and backward; with a 150k vocabulary that memory traffic, not the
matmuls, was the largest part of a training step's time on an H200 (benchmarks/train_profile.py).
Here each direction reads the logits once, in their own dtype, with float32 arithmetic:

- forward, per row: one pass over the vocabulary in blocks keeps a running max and sum of
  exponentials per lane, giving logsumexp; the target's logit minus it is the log-prob;
- backward, per row: one pass writes d logp / d logits = onehot(target) - softmax, times the
  incoming gradient, in the logits' dtype.

Only imported where Triton is (it is not part of the CPU install).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 4096
_FLOOR = -1e30  # a running max that starts finite: exp(-inf - _FLOOR) is 0, never nan


@triton.jit
def _forward(logits, row_stride, target, out, lse_out, vocab, BLOCK: tl.constexpr, FLOOR: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits + row * row_stride
    run_max = tl.full([BLOCK], FLOOR, tl.float32)
    run_sum = tl.zeros([BLOCK], tl.float32)
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < vocab, other=-float("inf")).to(tl.float32)
        new_max = tl.maximum(run_max, x)
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.exp(x - new_max)
        run_max = new_max
    top = tl.max(run_max, axis=0)
    lse = top + tl.log(tl.sum(run_sum * tl.exp(run_max - top), axis=0))
    t = tl.load(target + row)
    # an id outside the vocabulary reads nothing and gives nan (the update is then skipped as
    # non-finite), where the chunked version's gather would raise
    picked = tl.load(base + t, mask=(t >= 0) & (t < vocab), other=float("nan")).to(tl.float32)
    tl.store(out + row, picked - lse)
    tl.store(lse_out + row, lse)


@triton.jit
def _backward(logits, row_stride, grad, grad_stride, target, lse_in, grad_out, vocab, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits + row * row_stride
    dest = grad + row * grad_stride
    g = tl.load(grad_out + row)
    lse = tl.load(lse_in + row)
    t = tl.load(target + row)
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < vocab
        x = tl.load(base + cols, mask=inside, other=0.0).to(tl.float32)
        d = -g * tl.exp(x - lse)
        d = tl.where(cols == t, d + g, d)
        tl.store(dest + cols, d.to(grad.dtype.element_ty), mask=inside)


class FusedLogprobs(torch.autograd.Function):
    """log softmax(logits)[target] for rows of logits [N, V] (unit stride along V), float32 out."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.stride(-1) != 1:
            logits = logits.contiguous()
        rows, vocab = logits.shape
        target = target.contiguous()
        out = torch.empty(rows, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        if rows:
            _forward[(rows,)](logits, logits.stride(0), target, out, lse, vocab, BLOCK=_BLOCK, FLOOR=_FLOOR, num_warps=8)
        ctx.save_for_backward(logits, target, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, target, lse = ctx.saved_tensors
        rows, vocab = logits.shape
        grad = torch.empty((rows, vocab), dtype=logits.dtype, device=logits.device)
        if rows:
            _backward[(rows,)](logits, logits.stride(0), grad, grad.stride(0), target, lse,
                               grad_out.float().contiguous(), vocab, BLOCK=_BLOCK, num_warps=8)
        return grad, None
