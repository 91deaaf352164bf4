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


def _first_fit(lengths: torch.Tensor, max_tokens: int, packed: bool) -> list[list[int]]:
    """Rows (indices) in the fewest micro-batches that keep each within `max_tokens`: first fit,
    longest rows first. A row longer than the budget gets a micro-batch of its own."""
    bins: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -int(lengths[i])):
        for b in bins:
            if _cost([int(lengths[j]) for j in b] + [int(lengths[i])], packed) <= max_tokens:
                b.append(i)
                break
        else:
            bins.append([i])
    return bins


def count(lengths: torch.Tensor, micro_batch_size: int, max_tokens: int | None, packed: bool) -> int:
    """How many micro-batches this rank needs: by rows, or the fewest that keep every one within
    `max_tokens`."""
    if not max_tokens:
        return math.ceil(len(lengths) / micro_batch_size)
    return len(_first_fit(lengths, max_tokens, packed))


def split(lengths: torch.Tensor, parts: int, max_tokens: int | None, packed: bool) -> list[torch.Tensor]:
    """Row indices of exactly `parts` non-empty micro-batches, each in ascending row order.

    By rows: contiguous, near-equal chunks. By tokens: the first-fit micro-batches of `count`,
    then (when another rank needs more of them) the costliest one halved until there are `parts`;
    halving never raises a micro-batch's cost, so each stays within the budget (unless it is a
    single row longer than the budget)."""
    n = len(lengths)
    if parts > n:
        raise ValueError(f"{parts} micro-batches asked of {n} rows: every micro-batch needs a row")
    if not max_tokens:
        return list(torch.arange(n).tensor_split(parts))
    bins = _first_fit(lengths, max_tokens, packed)
    while len(bins) < parts:
        worst = max((b for b in bins if len(b) > 1), key=lambda b: _cost([int(lengths[j]) for j in b], packed))
        bins.remove(worst)
        bins += [worst[: len(worst) // 2], worst[len(worst) // 2:]]
    return [torch.tensor(sorted(b), dtype=torch.long) for b in bins]


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
