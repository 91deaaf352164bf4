"""Methods added to every vLLM worker (`LLM(worker_extension_cls=...)`); `self` is the worker."""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict

import torch

from rollout.load_plan import ReplayLoader
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

    def weights_used_as_loaded(self) -> bool:
        """Whether this worker's model uses its weights as `load_weights` leaves them: CUDA (vLLM's
        CPU kernels re-pack weights), no quantization, no MLA, and every fused-MoE layer on a Triton
        kernel (vLLM's FlashInfer MoE backends swap or re-block the expert weights after loading)."""
        from vllm.platforms import current_platform

        if not current_platform.is_cuda() or self.model_config.quantization is not None or self.model_config.use_mla:
            return False
        for module in self.model_runner.model.modules():
            backend = getattr(getattr(module, "quant_method", None), "unquantized_backend", None)
            if backend is not None and backend.name not in ("TRITON", "BATCHED_TRITON"):
                return False
        return True

    def head_is_embedding(self) -> bool:
        """Whether the model's output head and input embedding are one tensor here (vLLM ties them
        by sharing the module); `load_weights` then skips a pushed `lm_head.weight`."""
        params = dict(self.model_runner.model.named_parameters(remove_duplicate=False))
        head = params.get("lm_head.weight")
        return head is not None and head is params.get("model.embed_tokens.weight")

    def load_in_place(self, update_info: dict, reused: bool) -> None:
        """One payload of vLLM's weight-transfer engine, loaded by the model's own `load_weights`
        straight into the live parameters (which re-shards for this TP rank and fuses q/k/v and
        gate/up). vLLM's default, a layer-by-layer reload, rebuilds each layer and copies it back,
        which is needed only where weights are processed after loading (`weights_used_as_loaded`
        says they are not); CUDA graphs keep their addresses. Once a layout has loaded, its copies
        are replayed without `load_weights` (rollout/load_plan.py).

        The CUDA IPC buffers the trainer reuses push after push (`reused`; one or two) stay mapped
        here, so each is opened once, and their tensors are read in place instead of cloned: the
        views of a buffer's layout, and the replay's views of them, are made once and dropped with
        the buffer when a new sender's buffers replace it."""
        from vllm.distributed.weight_transfer.ipc_engine import IPCWeightTransferEngine

        timing = self.__dict__.setdefault("push_timing", defaultdict(float))  # seconds, summed over loads
        t0 = time.perf_counter()
        engine = self.weight_transfer_engine
        if "_replay" not in self.__dict__:
            self._replay = ReplayLoader(self.model_runner.model.load_weights, self.model_runner.model)
        with torch.device(self.device):
            if isinstance(engine, IPCWeightTransferEngine) and update_info.get("packed"):
                tensors = self._ipc_tensors(update_info, reused)
                t1 = time.perf_counter()
                self._replay(tensors, pinned=reused)
            else:
                info = engine.parse_update_info(dict(update_info))
                t1 = time.perf_counter()
                engine.receive_weights(info, load_weights=self._replay)
        t2 = time.perf_counter()
        torch.accelerator.synchronize()  # the sender may overwrite its buffer once this returns
        t3 = time.perf_counter()
        timing["prepare_s"] += t1 - t0
        timing["load_s"] += t2 - t1
        timing["sync_s"] += t3 - t2

    def _ipc_tensors(self, info: dict, reused: bool) -> list[tuple[str, torch.Tensor]]:
        """The named tensors of a packed CUDA IPC payload (our sender's update info, as a dict)."""
        from torch.multiprocessing.reductions import rebuild_cuda_tensor
        from vllm.distributed.weight_transfer.packed_tensor import unpack_tensor

        device = torch.accelerator.current_device_index()
        uuid = str(torch.cuda.get_device_properties(device).uuid)
        handles = info["ipc_handles"]
        if uuid not in handles:
            raise ValueError(f"IPC handle not found for GPU UUID {uuid}. Available UUIDs: {list(handles)}")
        args = list(handles[uuid])
        args[6] = device  # the handle names the sender's device index; this process numbers its own
        mapped = self.__dict__.setdefault("_ipc_mapped", OrderedDict())
        unpacked = self.__dict__.setdefault("_ipc_unpacked", {})  # (buffer, layout) -> its tensors
        key = (args[7], args[9], args[3])  # the memory handle, its storage offset, the tensor's offset
        layout = (key, tuple(info["names"]), tuple(map(tuple, info["shapes"])), tuple(info["dtype_names"]),
                  tuple(info["tensor_sizes"]))
        if reused and layout in unpacked:
            mapped.move_to_end(key)
            return unpacked[layout]
        buffer = mapped.get(key)
        if buffer is None:
            buffer = rebuild_cuda_tensor(*args)
            if reused:
                mapped[key] = buffer
                while len(mapped) > 2:  # a new sender's buffers (after a reconnect) replace the old ones
                    gone, old_buffer = mapped.popitem(last=False)
                    for old in [k for k in unpacked if k[0] == gone]:
                        del unpacked[old]
                    start = old_buffer.data_ptr()  # and the replay's views of it, so it can be unmapped
                    self._replay.forget(start, start + old_buffer.numel() * old_buffer.element_size())
        elif reused:
            mapped.move_to_end(key)
        dtypes = [getattr(torch, d) for d in info["dtype_names"]]
        tensors = unpack_tensor(buffer[: sum(info["tensor_sizes"])], info["names"], info["shapes"], dtypes,
                                info["tensor_sizes"])
        if reused:
            unpacked[layout] = tensors
        return tensors
