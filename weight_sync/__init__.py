"""Moving the trainer's weights into the rollout engines, by a transport chosen by placement.

The controller calls one method (`TrainerGroup.all("sync_weights")`); each trainer rank runs a
`WeightSender` and each rollout engine a `WeightReceiver` of the same transport. Which one is
decided here, from the config and the devices, and nowhere else.
"""

from __future__ import annotations

TRANSPORTS = {
    "object_store": ("weight_sync.object_store:ObjectStoreSender", "weight_sync.object_store:ObjectStoreReceiver"),
    "cuda_ipc": ("weight_sync.cuda_ipc:CudaIpcSender", "weight_sync.cuda_ipc:CudaIpcReceiver"),
}


def choose_transport(requested: str, cuda: bool) -> str:
    """`auto`: CUDA IPC handles on GPU (trainer and rollout share the GPUs: colocated), Ray's
    object store on CPU. An explicit name is taken as it is."""
    if requested != "auto":
        return requested
    return "cuda_ipc" if cuda else "object_store"
