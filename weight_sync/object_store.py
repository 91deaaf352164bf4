"""Transport through Ray's object store: rank 0 packs host buckets and hands each to every
rollout engine. Works between any two processes of a Ray cluster (CPU runs, or any fallback)."""

from __future__ import annotations

from collections.abc import Iterator

import ray
import torch

from weight_sync.base import WeightReceiver, WeightSender
from weight_sync.buckets import Bucket, pack_buckets


class ObjectStoreSender(WeightSender):
    def send(self, weights: Iterator[tuple[str, torch.Tensor]]) -> int:
        if self.rank != 0:
            for _ in weights:  # the other ranks take part in gathering each full tensor
                pass
            return 0
        sent = 0
        ray.get([r.begin_weight_update.remote() for r in self.receivers])
        for bucket in pack_buckets(weights, self.bucket_bytes):
            ref = ray.put(bucket)  # one copy in the object store, shared by every receiver
            ray.get([r.receive_weights.remote(ref) for r in self.receivers])
            sent += bucket.data.nbytes
        ray.get([r.finish_weight_update.remote() for r in self.receivers])
        return sent


class ObjectStoreReceiver(WeightReceiver):
    """Keeps the buckets of one push and loads them at `finish`: vLLM's CPU backend reloads a
    model in one pass (its kernels re-pack weights after loading)."""

    def _begin(self) -> None:
        self.buckets: list[Bucket] = []

    def _names(self, payload: Bucket) -> list[str]:
        return [name for name, *_ in payload.index]

    def _receive(self, payload: Bucket) -> None:
        self.buckets.append(payload)

    def _finish(self) -> None:
        self.engine.load_buckets(self.buckets)
        self.buckets = []
