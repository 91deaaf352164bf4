"""Transport by CUDA IPC handles, for trainer ranks and vLLM engines that share GPUs (colocated).

Every trainer rank keeps up to two GPU buffers of `bucket_bytes` for the life of the run (the
second made only if a push fills the first), each shared once with CUDA IPC (their handles merged across ranks by GPU UUID, so each vLLM worker maps the buffer
on its own GPU, once). A push casts the full tensors straight into a buffer, many at a time (one
`torch._foreach_copy_`: a few kernel launches instead of one cast and one copy per tensor); a full
buffer is announced to the engines (vLLM's packed IPC update info) and the next one filled while
they load it. The trainer waits only before refilling a buffer the engines may still be reading,
and rank 0 issues every call of a push before waiting on any (the first payload's call also begins
the push, the last one's finishes it), so a push costs one round trip plus the copies. No byte
leaves the GPU. A tensor larger than a bucket is shared from its own memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import ray
import torch
import torch.distributed as dist

from weight_sync.base import WeightSender, WeightSyncError
from weight_sync.vllm_native import VllmTransferReceiver

# Source bytes of the copies batched into one foreach call. On one rank the exported tensors are
# the parameters themselves; sharded, each is a fresh gather, so a batch holds this much of them.
_BATCH_BYTES = 1 << 27


def _gpu_uuid() -> str:
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


def _share(tensor: torch.Tensor) -> dict[str, tuple]:
    """This rank's IPC handle of `tensor`, merged with every other rank's (a collective)."""
    from torch.multiprocessing.reductions import reduce_tensor

    mine = {_gpu_uuid(): reduce_tensor(tensor)[1]}
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return mine
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return {uuid: args for handles in every for uuid, args in handles.items()}


class CudaIpcSender(WeightSender):
    casts_in_copy = True

    def __init__(self, rank: int, receivers: list, bucket_bytes: int, names: list[str],
                 dtype: torch.dtype | None = None):
        super().__init__(rank, receivers, bucket_bytes, names, dtype)
        self.buffers: list[torch.Tensor] = []
        self.handles: list[dict] = []
        # per buffer, its typed views by (offset, dtype, shape): a push lays the tensors out as the
        # last one did, and making ~300 views costs milliseconds of the host's time a push
        self.views: list[dict[tuple, torch.Tensor]] = []
        self.timing: dict[str, float] = {}
        self.events: list[tuple[str, float, float]] = []  # the last push: (what, wall-clock start, end)

    def _buffer(self, b: int, device: torch.device) -> torch.Tensor:
        """Buffer `b`, made when first needed and kept for the run (a collective: every rank is
        here), so a model that fits one bucket never holds a second."""
        if len(self.buffers) <= b:
            self.buffers.append(torch.empty(self.bucket_bytes, dtype=torch.uint8, device=device))
            self.handles.append(_share(self.buffers[-1]))
            self.views.append({})
        return self.buffers[b]

    def _view(self, b: int, offset: int, dtype: torch.dtype, tensor: torch.Tensor) -> torch.Tensor:
        key = (offset, dtype, tensor.shape)
        view = self.views[b].get(key) if b < len(self.views) else None
        if view is None:
            nbytes = tensor.numel() * dtype.itemsize
            view = self._buffer(b, tensor.device)[offset : offset + nbytes].view(dtype).view(tensor.shape)
            self.views[b][key] = view
        return view

    def send(self, weights: Iterator[tuple[str, torch.Tensor]]) -> int:
        lead = self.rank == 0
        multi = dist.is_initialized() and dist.get_world_size() > 1
        calls: list[list] = [[], []]  # per buffer, the engines' calls that may still read it
        issued: list = []  # every call of this push
        meta: list[tuple[str, torch.dtype, list[int], int]] = []
        b = used = sent = flushed = 0
        waited = synced = 0.0
        began = False  # the first payload's call also begins the push on each engine
        t0 = time.perf_counter()
        self.events = events = [("push", time.time(), 0.0)]
        # where the exported tensors live (before the first: where a collective of this backend runs)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.is_initialized() and \
            dist.get_backend() == "nccl" else torch.device("cpu")

        def agree(error: Exception | None) -> None:
            """A barrier that also tells every rank whether one failed (rank 0: an engine did), so
            none is left waiting for a rank that gave up."""
            if multi:
                flag = torch.tensor([error is not None], dtype=torch.int32, device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                if flag.item() and error is None:
                    raise WeightSyncError("another trainer rank's weight push failed (its error is in its log)")
            if error is not None:
                raise error

        def wait(refs: list) -> None:
            nonlocal waited
            t, start = time.perf_counter(), time.time()
            error = None
            if lead:
                try:
                    ray.get(refs)
                except Exception as e:  # noqa: BLE001 - re-raised below; other engines may still read a buffer
                    error = e
                    ray.wait(issued, num_returns=len(issued), timeout=60)
            agree(error)  # every rank's buffer is free once rank 0 knows the engines are done
            waited += time.perf_counter() - t
            events.append(("wait", start, time.time()))

        pending: tuple[list, list] = ([], [])  # buffer views and the tensors to copy into them
        pending_bytes = 0

        def copy_pending() -> None:
            nonlocal pending, pending_bytes
            if pending[0]:
                torch._foreach_copy_(*pending)  # casts to the views' dtype on the way
            pending, pending_bytes = ([], []), 0

        def announce(handles: dict, meta: list, reused: bool, finish: bool = False) -> list:
            nonlocal synced, began
            start = time.time()
            copy_pending()
            if device.type == "cuda":
                t = time.perf_counter()
                torch.cuda.current_stream().synchronize()  # the engines read what the copies wrote
                synced += time.perf_counter() - t
            events.append(("copy", start, time.time()))
            if multi:
                agree(None)  # ... on every rank: each engine worker reads its own GPU's buffer
            info = {"names": [m[0] for m in meta], "dtype_names": [str(m[1]).removeprefix("torch.") for m in meta],
                    "shapes": [m[2] for m in meta], "tensor_sizes": [m[3] for m in meta], "ipc_handles": handles,
                    "packed": True, "reused": reused}
            start = time.time()
            refs = [r.receive_weights.remote(info, not began, finish) for r in self.receivers] if lead else []
            events.append(("call", start, time.time()))
            began = True
            issued.extend(refs)
            return refs

        for name, tensor in weights:
            device = tensor.device
            dtype = self.dtype or tensor.dtype
            nbytes = tensor.numel() * dtype.itemsize
            if nbytes > self.bucket_bytes:  # on its own, from its own memory, waited for at once
                own = tensor.detach().to(dtype).contiguous().view(-1).view(torch.uint8)  # bytes, as a buffer is
                wait(announce(_share(own), [(name, dtype, list(tensor.shape), nbytes)], reused=False))
                sent += nbytes
                continue
            if used + nbytes > self.bucket_bytes:
                calls[b] = announce(self.handles[b], meta, reused=True)
                sent, flushed = sent + used, flushed + 1
                b, meta, used = 1 - b, [], 0
                if flushed >= 2:  # this buffer was announced before: the engines may still read it
                    wait(calls[b])
                    calls[b] = []
            pending[0].append(self._view(b, used, dtype, tensor))
            pending[1].append(tensor.detach())
            pending_bytes += tensor.numel() * tensor.element_size()
            if pending_bytes >= _BATCH_BYTES:
                copy_pending()
            meta.append((name, dtype, list(tensor.shape), nbytes))
            used += nbytes
        if used:  # the last payload's call also finishes the push
            announce(self.handles[b], meta, reused=True, finish=True)
            sent += used
        elif lead:
            if not began:
                issued.extend(r.begin_weight_update.remote() for r in self.receivers)
            issued.extend(r.finish_weight_update.remote() for r in self.receivers)
        wait(list(issued))
        events[0] = ("push", events[0][1], time.time())
        self.timing = {"push_wait_s": waited, "push_copy_sync_s": synced, "push_total_s": time.perf_counter() - t0}
        return sent if lead else 0


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
