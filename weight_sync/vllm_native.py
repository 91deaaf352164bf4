"""The receiving end shared by the transports built on vLLM's own weight-transfer engine
(`LLM(weight_transfer_config=...)`). Every vLLM worker of the engine receives the full tensors
and the model's `load_weights` re-shards them for its tensor-parallel rank.

Unquantized models on CUDA load each payload straight into the live parameters
(`VLLMRollout.load_in_place`); others go through vLLM's layer-by-layer reload
(`start_weight_update`, `update_weights` per payload, `finish_weight_update`), which processes
weights after loading as a fresh load would."""

from __future__ import annotations

from weight_sync.base import WeightReceiver


class VllmTransferReceiver(WeightReceiver):
    def _names(self, payload: dict) -> list[str]:
        return payload["names"]

    def _begin(self) -> None:
        if not self.engine.loads_in_place:
            self.engine.llm.start_weight_update(is_checkpoint_format=True)

    def _receive(self, payload: dict) -> None:
        info = dict(payload)
        reused = info.pop("reused", False)  # ours, not a field of vLLM's update info
        if self.engine.loads_in_place:
            self.engine.load_in_place(info, reused)
        else:
            self.engine.llm.update_weights({"update_info": info})

    def _finish(self) -> None:
        if not self.engine.loads_in_place:
            self.engine.llm.finish_weight_update()
