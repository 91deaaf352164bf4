"""The NeMo Automodel training engine: Automodel's distributed setup and FSDP2 parallelizer,
its optimizer builder and LR schedule, around an HF causal LM.

On CUDA the model is built by `NeMoAutoModelForCausalLM` (Automodel's fast kernels and custom
MoE models); on CPU, where that builder needs a GPU, the same HF model class is loaded with
`AutoModelForCausalLM` and goes through the same Automodel parallelizer, optimizer and schedule.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from tensordict import TensorDict
from torch.distributed.tensor import DTensor

from engines.base import EngineConfig, LossFn, OptimConfig, TrainingEngine
from engines.grads import clip_grad_norm
from engines.ops import token_entropy, token_logprobs, token_values

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class AutomodelEngine(TrainingEngine):
    """`head="lm"`: the policy (or a frozen reference); `head="value"`: a critic, the same
    backbone with a scalar value head (initialised to zero, so every rank starts identical).

    Weights and optimizer state are float32 (master weights); `cfg.dtype` is the compute dtype:
    FSDP2 casts the parameters for forward and backward and reduces gradients in float32, and a
    one-rank world (where Automodel applies no FSDP) computes under autocast instead."""

    def __init__(self, model_path: str, cfg: EngineConfig, trainable: bool, head: str = "lm"):
        from nemo_automodel.components.distributed.config import (
            DistributedSetup,
            FSDP2Config,
        )
        from nemo_automodel.components.distributed.init_utils import (
            initialize_distributed,
        )
        from nemo_automodel.components.distributed.mesh import ParallelismSizes
        from nemo_automodel.components.distributed.model_parallelizer import (
            parallelize_model,
        )
        from torch.distributed.fsdp import MixedPrecisionPolicy

        self.cfg = cfg
        self.model_path = model_path
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.dist = initialize_distributed(backend="nccl" if cuda else "gloo", timeout_minutes=10)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        torch.manual_seed(cfg.seed + self.rank)

        dtype = _dtype(cfg.dtype)
        self.head = head
        master = torch.float32 if trainable else dtype  # a frozen reference needs no master copy
        self.model = self._build_model(model_path, master, cuda) if head == "lm" else self._build_critic(model_path, master)
        # Dropout would make the training forward disagree with the log-probs and values taken in
        # eval mode (PPO's ratio would not start at 1): RL trains without it, as SFT here does.
        for module in self.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        strategy = FSDP2Config(mp_policy=MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32))
        sizes = ParallelismSizes(tp_size=cfg.tp_size, ep_size=cfg.ep_size)
        setup = DistributedSetup.build(strategy=strategy, parallelism_sizes=sizes)
        mesh = setup.mesh_context.device_mesh
        self.model = parallelize_model(self.model, setup.mesh_context)
        self.tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        # The ranks of one tensor-parallel group hold one replica and see the same rows; losses,
        # metrics and gradients are averaged over the data-parallel axis only.
        dp_mesh = mesh["dp"]
        self.dp_rank, self.dp_size = dp_mesh.get_local_rank(), dp_mesh.size()
        self.dp_group = dp_mesh.get_group() if self.dp_size > 1 else None
        from nemo_automodel.components.distributed.fsdp2 import fsdp2_sharding_enabled

        sharded = fsdp2_sharding_enabled(mesh)
        self._autocast = (
            torch.autocast(self.device.type, dtype=dtype) if not sharded and dtype != torch.float32 else None
        )

        self.optimizer = self.scheduler = None
        if not trainable:
            self.model.requires_grad_(False)
            self.model.eval()

    def _build_model(self, path: str, dtype: torch.dtype, cuda: bool) -> torch.nn.Module:
        if cuda:
            from nemo_automodel import NeMoAutoModelForCausalLM

            return NeMoAutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, use_safetensors=True,
                                                            trust_remote_code=self.cfg.trust_remote_code)
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                    trust_remote_code=self.cfg.trust_remote_code)

    def _build_critic(self, path: str, dtype: torch.dtype) -> torch.nn.Module:
        # Automodel has no value-head model class; HF's token-classification head is one.
        from transformers import AutoConfig, AutoModelForTokenClassification

        config = AutoConfig.from_pretrained(path, num_labels=1, trust_remote_code=self.cfg.trust_remote_code)
        model = AutoModelForTokenClassification.from_pretrained(path, config=config, dtype=dtype, use_safetensors=True,
                                                                trust_remote_code=self.cfg.trust_remote_code)
        model.config.architectures = [type(model).__name__]  # a saved critic loads as what it is
        with torch.no_grad():
            model.score.weight.zero_()
            if getattr(model.score, "bias", None) is not None:
                model.score.bias.zero_()
        return model.to(self.device)

    def configure_optimizer(self, cfg: OptimConfig) -> None:
        from nemo_automodel.components.optim.optimizer import (
            AdamWConfig,
            build_optimizer,
        )
        from nemo_automodel.components.optim.scheduler import OptimizerParamScheduler

        self._reshard()
        opt_cfg = AdamWConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas))
        (self.optimizer,) = build_optimizer(self.model, opt_cfg)
        self.scheduler = OptimizerParamScheduler(
            self.optimizer,
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

    def _forward(self, mb: TensorDict, needs: frozenset) -> dict[str, torch.Tensor]:
        mb = mb.to(self.device)
        with self._autocast or contextlib.nullcontext():
            logits = self.model(
                input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], position_ids=mb["position_ids"],
                use_cache=False,
            ).logits
        if isinstance(logits, DTensor):
            # Tensor parallel leaves the logits sharded over the vocabulary; gathering them is
            # simple and differentiable (a vocab-parallel log-softmax would move less).
            logits = logits.full_tensor()
        out = {}
        if "values" in needs:
            out["values"] = token_values(logits)
        if "logprobs" in needs:
            out["logprobs"] = token_logprobs(logits, mb["input_ids"])
        if "entropy" in needs:
            out["entropy"] = token_entropy(logits)
        return out

    def _micro_batches(self, batch: TensorDict) -> list[TensorDict]:
        # Every data-parallel shard has the same number of rows (the driver splits evenly), so
        # every rank runs the same number of forwards: FSDP's collectives stay in step.
        n = math.ceil(batch.batch_size[0] / self.cfg.micro_batch_size)
        return [batch[idx] for idx in torch.arange(batch.batch_size[0]).tensor_split(n)]

    def _reshard(self) -> None:
        """Return every FSDP module to its sharded parameters. A no-grad forward leaves the modules
        that do not reshard after forward (the root, by Automodel's default) holding unsharded
        copies in place of the registered parameters; an optimizer built then would step those."""
        from torch.distributed.fsdp import FSDPModule

        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    @torch.no_grad()
    def _infer(self, batch: TensorDict, key: str) -> torch.Tensor:
        self.model.eval()
        out = torch.cat([self._forward(mb, frozenset({key}))[key].cpu() for mb in self._micro_batches(batch)])
        self._reshard()
        return out

    def logprobs(self, batch: TensorDict) -> torch.Tensor:
        return self._infer(batch, "logprobs")

    def values(self, batch: TensorDict) -> torch.Tensor:
        return self._infer(batch, "values")

    def train_step(self, batch: TensorDict, loss_fn: LossFn, normaliser: float) -> dict[str, float]:
        if self.optimizer is None:
            raise RuntimeError("train_step before configure_optimizer (or on a frozen engine)")
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # FSDP averages gradients over data-parallel ranks; scaling by their number turns that
        # average back into the sum of per-rank contributions, so the result is a global mean.
        scale = self.dp_size / max(normaliser, 1e-12)
        totals: dict[str, torch.Tensor] = {}
        self._last_logprobs = []
        for mb in self._micro_batches(batch):
            out = self._forward(mb, loss_fn.needs)
            if "logprobs" in out:
                self._last_logprobs.append(out["logprobs"].detach().cpu())
            loss_sum, stats = loss_fn(out, mb.to(self.device))
            (loss_sum * scale).backward()
            for k, v in {"loss": loss_sum.detach(), **stats}.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float()
        grad_norm = clip_grad_norm(self.model.parameters(), self.cfg.max_grad_norm)
        keys = sorted(totals)  # "loss" is always among them
        # One collective for all metrics, on the backend's device (NCCL takes no CPU tensors).
        summed = torch.stack([torch.as_tensor(totals[k], device=self.device) for k in keys])
        if self.dp_group is not None:
            dist.all_reduce(summed, group=self.dp_group)
        sums = {k: float(v) for k, v in zip(keys, summed.cpu())}
        # A non-finite loss or gradient norm (the same on every rank, both are global) skips the
        # update: the weights and optimizer moments stay as they were.
        skipped = not (math.isfinite(grad_norm) and math.isfinite(sums["loss"]))
        if not skipped:
            self.optimizer.step()
        self.scheduler.step(1)
        metrics = loss_fn.reduce(sums, normaliser)
        role = "actor" if self.head == "lm" else "critic"
        metrics.update(
            {
                f"{role}/grad_norm": grad_norm,
                f"{role}/lr": float(self.optimizer.param_groups[0]["lr"]),
                f"{role}/skipped_step": float(skipped),
            }
        )
        return metrics

    def last_logprobs(self) -> torch.Tensor:
        return torch.cat(self._last_logprobs)

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return {}
        # vLLM keeps its own copy of a tied head: send it explicitly or it goes stale.
        if self.tied and "lm_head.weight" not in sd:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        return sd

    def export_weights(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        self._reshard()
        adapter = getattr(self.model, "state_dict_adapter", None)
        embed, sent = None, set()
        for fqn, tensor in self.model.state_dict().items():
            full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
            full = full.detach().to(dtype) if dtype is not None else full.detach()
            # Automodel's own model classes (MoE above all) name and lay out some weights their
            # own way; their state-dict adapter turns each into its Hugging Face tensors.
            for name, hf in adapter.convert_single_tensor_to_hf(fqn, full) if adapter else [(fqn, full)]:
                if name == "model.embed_tokens.weight":
                    embed = hf
                sent.add(name)
                yield name, hf
        # vLLM keeps its own copy of a tied head: send it explicitly or it goes stale.
        if self.tied and embed is not None and "lm_head.weight" not in sent:
            yield "lm_head.weight", embed

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        sd = self._full_state_dict()
        if self.rank == 0:
            out = Path(path)
            out.mkdir(parents=True, exist_ok=True)
            if self.tied:
                sd.pop("lm_head.weight", None)
            save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
            self.model.config.save_pretrained(out)
            gen = getattr(self.model, "generation_config", None)
            if gen is not None:
                gen.save_pretrained(out)
            for name in _TOKENIZER_FILES:
                src = Path(self.model_path) / name
                if src.exists():
                    shutil.copy(src, out / name)
        if self.world_size > 1:
            dist.barrier()

    def save_state(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        self._reshard()
        model_sd, optim_sd = get_state_dict(self.model, self._optimizers())
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
        torch.save(self._local_state(), Path(path) / f"rank{self.rank}.pt")
        if self.world_size > 1:
            dist.barrier()

    def load_state(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_state_dict,
            set_state_dict,
        )

        local = Path(path) / f"rank{self.rank}.pt"
        if not local.is_file():
            raise FileNotFoundError(f"{local} is missing: the state was saved by fewer ranks than this run has")
        self._reshard()
        # get_state_dict creates the optimizer's (empty) moments, so DCP has tensors to load into.
        model_sd, optim_sd = get_state_dict(self.model, self._optimizers())
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(self.model, self._optimizers(), model_state_dict=state["model"], optim_state_dict=state["optim"])
        extra = torch.load(local, weights_only=True)  # tensors and numbers only: no code can run
        if self.scheduler is not None:
            self.scheduler.load_state_dict(extra["scheduler"])
        torch.set_rng_state(extra["rng"])
        if extra.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(extra["cuda_rng"])

    def _optimizers(self) -> list:
        return [self.optimizer] if self.optimizer is not None else []

    def _local_state(self) -> dict:
        return {
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        }


def build_engine(model_path: str, cfg: EngineConfig, trainable: bool, head: str = "lm") -> TrainingEngine:
    return AutomodelEngine(model_path, cfg, trainable, head)

