"""Transport by CUDA IPC handles, for trainer ranks and vLLM engines that share GPUs (colocated).

Built on vLLM's own weight-transfer engine (`backend="ipc"`): every trainer rank packs the full
tensors into one reusable GPU buffer per chunk and shares a handle to it; the handles of all ranks
are merged by GPU UUID, so each vLLM worker maps the buffer on its own GPU and loads straight from
it. No byte leaves the GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict

import ray
import torch

from weight_sync.base import WeightSender, WeightSyncError
from weight_sync.vllm_native import VllmTransferReceiver


class CudaIpcSender(WeightSender):
    def send(self, weights: Iterator[tuple[str, torch.Tensor]]) -> int:
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerSendWeightsArgs, IPCWeightTransferEngine

        sent = 0

        def deliver(update_info) -> None:  # rank 0 only, once per packed chunk
            nonlocal sent
            sent += sum(update_info.tensor_sizes or [])
            ray.get([r.receive_weights.remote(asdict(update_info)) for r in self.receivers])

        if self.rank == 0:
            ray.get([r.begin_weight_update.remote() for r in self.receivers])
        args = IPCTrainerSendWeightsArgs(send_mode=deliver, packed=True, packed_buffer_size_bytes=self.bucket_bytes)
        IPCWeightTransferEngine.trainer_send_weights(weights, args)
        if self.rank == 0:
            ray.get([r.finish_weight_update.remote() for r in self.receivers])
        return sent


class CudaIpcReceiver(VllmTransferReceiver):
    def _receive(self, payload: dict) -> None:
        try:
            super()._receive(payload)
        except ValueError as e:
            if "IPC handle not found" in str(e):
                raise WeightSyncError(
                    f"{e}. This rollout engine's GPU holds no trainer rank, so CUDA IPC cannot reach it: place the "
                    f"engines on the trainer's GPUs, or set rollout.weight_transport=object_store"
                ) from e
            raise
