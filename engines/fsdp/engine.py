"""The plain-PyTorch reference engine: torch.distributed, PyTorch tensor parallel and FSDP2
(`fully_shard`), `torch.optim.AdamW` and HF transformers, nothing else.

It exists to check the Automodel engine against (same inputs, same numbers) and to run where
Automodel cannot. Tensor parallel follows the model's own Hugging Face plan (`model.tp_plan`,
e.g. Qwen2/Llama: q/k/v/gate/up column-wise, o/down row-wise, a vocab-parallel embedding and
LM head, norms replicated), applied with `parallelize_module`; FSDP2 then shards every decoder
layer and the root over the data-parallel mesh. Expert parallelism is Automodel's alone.
"""

from __future__ import annotations

import datetime
import math

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from engines.base import EngineConfig, OptimConfig, TrainingEngine
from engines.torch_engine import TorchEngine

# Hugging Face's tensor-parallel styles (transformers/integrations/tensor_parallel.py) as
# PyTorch's. The LM head's logits stay sharded over the vocabulary; TorchEngine gathers them.
_TP_STYLES = {
    "colwise": lambda: ColwiseParallel(),
    "rowwise": lambda: RowwiseParallel(),
    "embedding_rowwise": lambda: RowwiseParallel(input_layouts=Replicate()),
    "colwise_gather_output": lambda: ColwiseParallel(output_layouts=Shard(-1), use_local_output=False),
    # Qwen3's per-head q/k norms see [batch, seq, local heads, head_dim]: the weight stays
    # replicated and its gradient, partial on each rank, is summed over the heads of all ranks.
    "replicated_with_grad_allreduce": lambda: SequenceParallel(sequence_dim=2, use_local_output=True),
}


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """The LR at optimizer step `step` as a fraction of `cfg.lr`: Automodel's
    `OptimizerParamScheduler` as the Automodel engine configures it (linear warmup from 0 over
    `warmup_steps`, then constant, or cosine / linear decay to 0.1 x lr at `total_steps`)."""
    warmup, decay_end = cfg.warmup_steps, max(cfg.total_steps, cfg.warmup_steps + 1)
    if warmup > 0 and step <= warmup:
        return step / warmup
    if cfg.lr_schedule == "constant":
        return 1.0
    if step > decay_end:
        return 0.1
    ratio = (step - warmup) / (decay_end - warmup)
    coeff = 1.0 - ratio if cfg.lr_schedule == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1.0)
    return 0.1 + coeff * 0.9


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig):
    """`torch.optim.AdamW` (fused or foreach, as torch picks) over the trainable parameters, and
    its LR schedule (`lr_factor`), stepped once per optimizer step."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


def tensor_parallel_plan(model: torch.nn.Module) -> dict:
    """The model's Hugging Face TP plan as PyTorch parallel styles, keyed by module pattern."""
    plan = getattr(model, "tp_plan", None) or {}
    if not plan:
        raise ValueError(
            f"{type(model).__name__} has no Hugging Face tensor-parallel plan (config.base_model_tp_plan): the fsdp "
            f"engine cannot split it; use tp_size=1 or actor.engine=automodel"
        )
    unknown = {k: v for k, v in plan.items() if v not in _TP_STYLES}
    if unknown:
        raise ValueError(
            f"{type(model).__name__}'s tensor-parallel plan uses styles the fsdp engine does not implement: {unknown} "
            f"(it knows {sorted(_TP_STYLES)}); use tp_size=1 or actor.engine=automodel"
        )
    return {k: _TP_STYLES[v]() for k, v in plan.items()}


class FSDPEngine(TorchEngine):
    def __init__(self, model_path: str, cfg: EngineConfig, trainable: bool, head: str = "lm"):
        if cfg.ep_size > 1:
            raise ValueError(
                f"ep_size={cfg.ep_size}: expert parallelism is not supported by the plain FSDP2 engine; use "
                f"actor.engine=automodel (or ep_size=1)"
            )
        super().__init__(model_path, cfg, trainable, head)

    def _init_distributed(self, backend: str) -> tuple[int, int]:
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(minutes=10))
        return dist.get_rank(), dist.get_world_size()

    def _load_lm(self, path: str, dtype: torch.dtype) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=self.cfg.trust_remote_code)
        return model.to(self.device)

    def _parallelize(self, model: torch.nn.Module, dtype: torch.dtype):
        tp = self.cfg.tp_size
        if self.world_size % tp:
            raise ValueError(f"world size {self.world_size} is not divisible by tp_size={tp}")
        if self.world_size == 1:
            # As Automodel does on one rank: no FSDP; TorchEngine computes under autocast.
            return model, None, False
        mesh = init_device_mesh(self.device.type, (self.world_size // tp, tp), mesh_dim_names=("dp", "tp"))
        if tp > 1:
            self._tensor_parallel(model, mesh["tp"])
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
        for layer in model.base_model.layers:
            fully_shard(layer, mesh=mesh["dp"], mp_policy=policy)
        fully_shard(model, mesh=mesh["dp"], mp_policy=policy)
        return model, mesh, True

    def _tensor_parallel(self, model: torch.nn.Module, tp_mesh) -> None:
        config, tp = model.config, tp_mesh.size()
        heads, kv_heads = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        if heads % tp or kv_heads % tp:
            raise ValueError(
                f"tp_size={tp} must divide the model's attention heads ({heads}) and key-value heads ({kv_heads}): "
                f"each tensor-parallel rank holds whole heads"
            )
        embed, head = model.get_input_embeddings(), model.get_output_embeddings()
        tied = head is not None and head.weight is embed.weight
        parallelize_module(model, tp_mesh, tensor_parallel_plan(model))
        if tied:
            # Each style replaced its module's weight with a DTensor of its own; both are the
            # vocabulary-sharded table, so one parameter serves both again.
            head.weight = embed.weight
        # Column-wise q/k/v leave each rank heads / tp heads; attention modules that keep head
        # counts (rather than inferring them from shapes) must see the local ones.
        for layer in model.base_model.layers:
            attn = layer.self_attn
            if hasattr(attn, "num_heads"):
                attn.num_heads = heads // tp
            if hasattr(attn, "num_key_value_heads"):
                attn.num_key_value_heads = kv_heads // tp

    def _build_optimizer(self, cfg: OptimConfig):
        return build_optimizer(self.model, cfg)


def build_engine(model_path: str, cfg: EngineConfig, trainable: bool, head: str = "lm") -> TrainingEngine:
    return FSDPEngine(model_path, cfg, trainable, head)
