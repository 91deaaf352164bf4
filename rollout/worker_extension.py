"""Methods added to every vLLM worker (`LLM(worker_extension_cls=...)`); `self` is the worker."""

from __future__ import annotations

from weight_sync.buckets import Bucket, unpack_bucket


class BucketLoader:
    def load_buckets(self, buckets: list[Bucket]) -> int:
        """Load HF-named full tensors in place; vLLM re-shards them for its own TP."""
        names = []

        def stream():
            for bucket in buckets:
                for name, tensor in unpack_bucket(bucket):
                    names.append(name)
                    yield name, tensor

        # reload_weights (not model.load_weights) also works after CPU kernels re-packed weights.
        self.reload_weights(weights_iterator=stream(), is_checkpoint_format=True)
        return len(names)
