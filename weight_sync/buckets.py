"""The weight bridge: full HF-named tensors from the trainer, packed into fixed-size buckets.

Sending tensor by tensor costs one round trip per tensor (peers lost minutes to it); a bucket
is one flat byte buffer plus a small index, so a push is a handful of transfers whatever the
model's size. Buffers are numpy arrays: they cross Ray's object store zero-copy on one node and
any RPC layer unchanged, and unpack to tensors without a copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Bucket:
    data: np.ndarray  # uint8, the tensors' bytes back to back
    index: list[tuple[str, str, tuple[int, ...], int, int]]  # name, dtype, shape, offset, nbytes


def pack_buckets(named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[Bucket]:
    pending: list[tuple[str, torch.Tensor]] = []
    size = 0

    def flush() -> Bucket:
        data = np.empty(size, dtype=np.uint8)
        index, offset = [], 0
        for name, t in pending:
            raw = t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy()
            data[offset : offset + raw.size] = raw
            index.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset, raw.size))
            offset += raw.size
        return Bucket(data, index)

    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if pending and size + nbytes > bucket_bytes:
            yield flush()
            pending, size = [], 0
        pending.append((name, tensor))
        size += nbytes
    if pending:
        yield flush()


def unpack_bucket(bucket: Bucket) -> Iterator[tuple[str, torch.Tensor]]:
    """Views into the bucket's buffer, no copy. The buffer may be read-only (Ray's object store
    hands out read-only arrays); the tensors are only read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        buf = torch.from_numpy(bucket.data)
    for name, dtype, shape, offset, nbytes in bucket.index:
        yield name, buf[offset : offset + nbytes].view(getattr(torch, dtype)).view(shape)
