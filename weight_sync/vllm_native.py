"""The receiving end shared by the transports built on vLLM's own weight-transfer engine
(`LLM(weight_transfer_config=...)`): a push is `start_weight_update`, one `update_weights` per
payload (every vLLM worker of the engine receives the full tensors and `load_weights` re-shards
them for its tensor-parallel rank), then `finish_weight_update`."""

from __future__ import annotations

from weight_sync.base import WeightReceiver


class VllmTransferReceiver(WeightReceiver):
    def _names(self, payload: dict) -> list[str]:
        return payload["names"]

    def _begin(self) -> None:
        self.engine.llm.start_weight_update(is_checkpoint_format=True)

    def _receive(self, payload: dict) -> None:
        self.engine.llm.update_weights({"update_info": payload})

    def _finish(self) -> None:
        self.engine.llm.finish_weight_update()
