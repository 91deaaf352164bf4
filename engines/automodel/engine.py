"""The NeMo Automodel training engine: Automodel's distributed setup and FSDP2/TP/EP parallelizer,
its optimizer builder and LR schedule, and its state-dict adapter, around an HF causal LM.

On CUDA the model is built by `NeMoAutoModelForCausalLM` (Automodel's fast kernels and custom
MoE models); on CPU, where that builder needs a GPU, the same HF model class is loaded with
`AutoModelForCausalLM` and goes through the same Automodel parallelizer, optimizer and schedule.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from engines.base import EngineConfig, LoraConfig, OptimConfig, TrainingEngine
from engines.torch_engine import TorchEngine


class _OneStep:
    """Automodel's schedule advances by an explicit increment; the engine steps it by one."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def step(self) -> None:
        self.scheduler.step(1)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)


class EagerFloat32RMSNorm(torch.nn.Module):
    """Automodel's `Float32RMSNorm` (the norm computed in float32, returned in the input's dtype)
    as one eager call of torch's `rms_norm`, whose own backward serves autograd. Automodel's
    compiles its forward and runs a hand-written backward: on one GPU the 0.5B shape's step
    waits on the host, and the compiled call's guards and wrappers cost about a tenth of it."""

    def __init__(self, norm: torch.nn.Module):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def eager_float32_norms(model: torch.nn.Module) -> int:
    """Replace every Automodel `Float32RMSNorm` in `model` by `EagerFloat32RMSNorm` over the same
    weight (names and parameters unchanged); how many were replaced."""
    from nemo_automodel.components.models.common.utils import Float32RMSNorm

    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is Float32RMSNorm]
    for parent, name, child in swaps:
        setattr(parent, name, EagerFloat32RMSNorm(child))
    return len(swaps)


class AutomodelEngine(TorchEngine):
    def _init_distributed(self, backend: str) -> tuple[int, int]:
        from nemo_automodel.components.distributed.init_utils import (
            initialize_distributed,
        )

        info = initialize_distributed(backend=backend, timeout_minutes=10)
        return info.rank, info.world_size

    def _load_lm(self, path: str, dtype: torch.dtype) -> torch.nn.Module:
        if self.device.type == "cuda":
            from nemo_automodel import NeMoAutoModelForCausalLM

            model = NeMoAutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, use_safetensors=True,
                                                             trust_remote_code=self.cfg.trust_remote_code)
            if self.world_size == 1:  # no DTensors (Automodel's op also carries their sharding rule)
                eager_float32_norms(model)
            return model
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                    trust_remote_code=self.cfg.trust_remote_code)

    def _apply_lora(self, model: torch.nn.Module, lora: LoraConfig) -> None:
        from nemo_automodel.components._peft.lora import (
            PeftConfig,
            apply_lora_to_linear_modules,
        )
        from nemo_automodel.components._peft.module_matcher import wildcard_match

        linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        for pattern in lora.target_modules:
            if not any(wildcard_match(pattern, name) for name in linear):
                leaves = sorted({n.rpartition(".")[2] for n in linear})
                raise ValueError(
                    f"actor.lora.target_modules pattern {pattern!r} matches no linear layer of {type(model).__name__}: "
                    f"patterns match full module names (e.g. '*.{leaves[0]}'); its linear layers are named {leaves}")

        # Adapters in float32 (master weights), whatever the dtype of the frozen base. Automodel's
        # memory-efficient LoRA recomputes the adapters' inputs and whole SwiGLU MLPs in backward.
        peft = PeftConfig(target_modules=list(lora.target_modules), dim=lora.rank, alpha=lora.alpha,
                          lora_dtype=torch.float32, use_memory_efficient_lora=lora.recompute)
        apply_lora_to_linear_modules(model, peft)

    def _parallelize(self, model: torch.nn.Module, dtype: torch.dtype):
        from nemo_automodel.components.distributed.config import (
            DistributedSetup,
            FSDP2Config,
        )
        from nemo_automodel.components.distributed.fsdp2 import (
            fsdp2_sharding_enabled,
        )
        from nemo_automodel.components.distributed.mesh import ParallelismSizes
        from nemo_automodel.components.distributed.model_parallelizer import (
            parallelize_model,
        )
        from torch.distributed.fsdp import MixedPrecisionPolicy

        strategy = FSDP2Config(mp_policy=MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32))
        sizes = ParallelismSizes(tp_size=self.cfg.tp_size, ep_size=self.cfg.ep_size)
        setup = DistributedSetup.build(strategy=strategy, parallelism_sizes=sizes)
        mesh = setup.mesh_context.device_mesh
        return parallelize_model(model, setup.mesh_context), mesh, fsdp2_sharding_enabled(mesh)

    def _build_optimizer(self, cfg: OptimConfig):
        from nemo_automodel.components.optim.optimizer import (
            AdamWConfig,
            build_optimizer,
        )
        from nemo_automodel.components.optim.scheduler import OptimizerParamScheduler

        opt_cfg = AdamWConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
        (optimizer,) = build_optimizer(self.model, opt_cfg)
        scheduler = OptimizerParamScheduler(
            optimizer,
            init_lr=0.0 if cfg.warmup_steps else cfg.lr,
            max_lr=cfg.lr,
            min_lr=0.1 * cfg.lr if cfg.lr_schedule != "constant" else cfg.lr,
            lr_warmup_steps=cfg.warmup_steps,
            lr_decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1),
            lr_decay_style=cfg.lr_schedule,
            start_wd=cfg.weight_decay,
            end_wd=cfg.weight_decay,
            wd_incr_steps=max(cfg.total_steps, 1),
            wd_incr_style="constant",
        )
        return optimizer, _OneStep(scheduler)

    def _hf_tensors(self, fqn: str, full: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        # Automodel's own model classes (MoE above all) name and lay out some weights their own
        # way; their state-dict adapter turns each into its Hugging Face tensors.
        adapter = getattr(self.model, "state_dict_adapter", None)
        yield from adapter.convert_single_tensor_to_hf(fqn, full) if adapter else [(fqn, full)]


def build_engine(model_path: str, cfg: EngineConfig, trainable: bool, head: str = "lm") -> TrainingEngine:
    return AutomodelEngine(model_path, cfg, trainable, head)
