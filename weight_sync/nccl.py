"""Transport by NCCL broadcast, for rollout engines on GPUs of their own (disaggregated).

Trainer rank 0 and every vLLM worker of every engine (each tensor-parallel rank) form one NCCL
group through vLLM's own weight-transfer engine (`backend="nccl"`: a StatelessProcessGroup and a
PyNcclCommunicator; the trainer is rank 0, engine e's workers follow the engines before it).

A push streams the trainer's full tensors bucket by bucket: rank 0 copies each tensor, as the
trainer produces it, into a GPU buffer of `bucket_bytes`; a full buffer is announced to every
engine (names, dtypes, shapes) and broadcast; each vLLM worker receives it into GPU memory and
loads it with the model's `load_weights`, which re-shards for its TP rank. No byte goes through
host memory, and the trainer gathers bucket k+1 while the engines load bucket k. The other
trainer ranks only take part in gathering each full tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import ray
import torch
from torch.distributed.elastic.utils.distributed import get_free_port

from weight_sync.base import WeightSender, WeightSyncError
from weight_sync.vllm_native import VllmTransferReceiver


class NcclSender(WeightSender):
    def __init__(self, rank: int, receivers: list, bucket_bytes: int, names: list[str],
                 dtype: torch.dtype | None = None):
        super().__init__(rank, receivers, bucket_bytes, names, dtype)
        self.group = self._connect() if rank == 0 else None

    def _connect(self):
        """Open the trainer's end (rank 0) while every engine's workers join theirs."""
        from vllm.distributed.weight_transfer.nccl_engine import (
            NCCLWeightTransferEngine,
        )

        sizes = ray.get([r.weight_workers.remote() for r in self.receivers])
        world = 1 + sum(sizes)
        host, port = ray.util.get_node_ip_address(), get_free_port()
        joined = [r.connect_weights.remote({"master_address": host, "master_port": port,
                                            "rank_offset": 1 + sum(sizes[:e]), "world_size": world})
                  for e, r in enumerate(self.receivers)]
        pool = ThreadPoolExecutor(max_workers=1)
        opened = pool.submit(NCCLWeightTransferEngine.trainer_init,
                             {"master_address": host, "master_port": port, "world_size": world})
        pending = joined
        while pending:  # an engine that fails to join raises here instead of NCCL waiting for it forever
            if opened.done() and opened.exception() is not None:
                raise WeightSyncError(f"the trainer's end of the NCCL weight group failed to open: {opened.exception()}")
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            ray.get(done)
        group = opened.result(timeout=300)
        pool.shutdown(wait=False)
        return group

    def send(self, weights: Iterator[tuple[str, torch.Tensor]]) -> int:
        if self.rank != 0:
            for _ in weights:  # the other ranks take part in gathering each full tensor
                pass
            return 0
        device = torch.device("cuda", torch.cuda.current_device())
        stream = torch.cuda.current_stream()
        buffer = torch.empty(self.bucket_bytes, dtype=torch.uint8, device=device)
        # the engines' calls in flight (an actor runs one caller's calls in order): begin, then a bucket
        loading: list = [r.begin_weight_update.remote() for r in self.receivers]
        meta: list[tuple[str, torch.dtype, list[int]]] = []
        used = sent = 0

        def broadcast(data: torch.Tensor, meta: list) -> None:
            nonlocal loading, sent
            self._wait(loading)  # the engines loaded the bucket before: they are free, and it arrived
            info = {"names": [n for n, _, _ in meta], "dtype_names": [str(d).removeprefix("torch.") for _, d, _ in meta],
                    "shapes": [s for _, _, s in meta], "packed": True, "packed_buffer_size_bytes": data.numel(),
                    "packed_num_buffers": 1}
            loading = [r.receive_weights.remote(info) for r in self.receivers]
            self.group.broadcast(data, src=0, stream=stream)
            sent += data.numel()

        for name, tensor in weights:
            raw = tensor.detach().to(device).contiguous().view(-1).view(torch.uint8)
            if used and used + raw.numel() > self.bucket_bytes:
                broadcast(buffer[:used], meta)
                meta, used = [], 0
            if raw.numel() > self.bucket_bytes:  # a tensor larger than a bucket travels on its own
                broadcast(raw, [(name, tensor.dtype, list(tensor.shape))])
                continue
            buffer[used : used + raw.numel()].copy_(raw)  # on the stream the broadcast runs on: in order
            meta.append((name, tensor.dtype, list(tensor.shape)))
            used += raw.numel()
        if used:
            broadcast(buffer[:used], meta)
        stream.synchronize()
        self._wait(loading + [r.finish_weight_update.remote() for r in self.receivers])
        return sent

    @staticmethod
    def _wait(calls: list) -> None:
        try:
            ray.get(calls)
        except Exception as e:
            raise WeightSyncError(
                f"a rollout engine failed to receive a weight bucket over NCCL ({e}); the transfer group is now "
                f"out of step and the run must restart"
            ) from e


class NcclReceiver(VllmTransferReceiver):
    def connect(self, info: dict) -> None:
        """Join the trainer's NCCL group (every vLLM worker of this engine, at `rank_offset` on)."""
        self.engine.llm.init_weight_transfer_engine({"init_info": info})
