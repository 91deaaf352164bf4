"""Splitting one rank's rows into micro-batches, and packing a micro-batch's rows into one row.

Two ways to split: a fixed number of rows per micro-batch, or a token budget
(`max_tokens`), where rows of similar length share a micro-batch so that few tokens are spent on
padding (or, packed, the budget counts real tokens only). Every data-parallel rank must run the
same number of forwards (FSDP's collectives pair them up), so the engine agrees on the count
across ranks and `split` is asked for exactly that many.
"""

from __future__ import annotations

import math

import torch


def _cost(lengths: list[int], packed: bool) -> int:
    """Tokens a micro-batch of rows with these lengths occupies."""
    return sum(lengths) if packed else len(lengths) * max(lengths)


def count(lengths: torch.Tensor, micro_batch_size: int, max_tokens: int | None, packed: bool) -> int:
    """How many micro-batches this rank needs: by rows, or the fewest that keep every one within
    `max_tokens` (first fit over rows sorted longest first)."""
    n = len(lengths)
    if not max_tokens:
        return math.ceil(n / micro_batch_size)
    bins: list[list[int]] = []
    for length in sorted(lengths.tolist(), reverse=True):
        for b in bins:
            if _cost(b + [length], packed) <= max_tokens:
                b.append(length)
                break
        else:
            bins.append([length])  # a row longer than the budget gets a micro-batch of its own
    return len(bins)


def split(lengths: torch.Tensor, parts: int, max_tokens: int | None, packed: bool) -> list[torch.Tensor]:
    """Row indices of `parts` micro-batches (each non-empty, in ascending row order).

    By rows: contiguous, near-equal chunks. By tokens: rows sorted longest first, each given to
    the micro-batch with the least cost so far (longest-processing-time balancing), so the
    micro-batches carry similar numbers of tokens."""
    n = len(lengths)
    parts = min(parts, n)
    if not max_tokens:
        return list(torch.arange(n).tensor_split(parts))
    order = sorted(range(n), key=lambda i: -int(lengths[i]))
    bins: list[list[int]] = [[] for _ in range(parts)]
    total, longest = [0] * parts, [0] * parts
    for i in order:
        length = int(lengths[i])
        # cost of bin b with this row added (rows come longest first: a bin's first row is its longest)
        costs = [total[b] + length if packed else (len(bins[b]) + 1) * max(longest[b], length) for b in range(parts)]
        best = min(range(parts), key=lambda b: (costs[b], b))
        bins[best].append(i)
        total[best] += length
        longest[best] = max(longest[best], length)
    return [torch.tensor(sorted(b), dtype=torch.long) for b in bins if b]


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor):
    """Right-padded rows [B, T] as one row [1, N] of their real tokens, positions restarting at 0
    for each row: the form Hugging Face models take for padding-free attention (each sequence
    attends only to itself: a block-causal mask, or variable-length kernels where available)."""
    keep = attention_mask.bool()
    return input_ids[keep][None], position_ids[keep][None], keep


def unpack(packed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """A per-token quantity of the packed row [1, N] back in the batch layout [B, T].

    Column t of a row holds what was predicted from the tokens before t; at a row's first token
    the packed row holds a prediction from the previous row's last token, which belongs to no
    sequence: column 0 is 0, as in the padded layout."""
    out = packed.new_zeros(keep.shape)
    out[keep] = packed[0]
    out[:, 0] = 0
    return out
