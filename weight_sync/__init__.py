"""Moving the trainer's weights into the rollout engines, by a transport chosen by placement.

The controller calls one method (`TrainerGroup.all("sync_weights")`); each trainer rank runs a
`WeightSender` and each rollout engine a `WeightReceiver` of the same transport. Which one is
decided here, from the config and the devices, and nowhere else.
"""

from __future__ import annotations

TRANSPORTS = {
    "object_store": ("weight_sync.object_store:ObjectStoreSender", "weight_sync.object_store:ObjectStoreReceiver"),
    "cuda_ipc": ("weight_sync.cuda_ipc:CudaIpcSender", "weight_sync.cuda_ipc:CudaIpcReceiver"),
    "nccl": ("weight_sync.nccl:NcclSender", "weight_sync.nccl:NcclReceiver"),
}


def choose_transport(requested: str, cuda: bool, placement: str) -> str:
    """`auto`: on GPU (trainer and engines both on GPUs), CUDA IPC handles when they share the GPUs
    (colocated) and an NCCL broadcast when the engines have GPUs of their own (disaggregated);
    Ray's object store otherwise. An explicit name is taken as it is."""
    if requested != "auto":
        return requested
    if not cuda:
        return "object_store"
    return "cuda_ipc" if placement == "colocated" else "nccl"
