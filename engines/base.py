"""The engine roles: what the driver may ask of whatever holds a model in a trainer group.

`InferenceEngine` serves a frozen reference and the forward passes of every role;
`TrainingEngine` adds the optimizer, so an actor or critic is one of each. One engine instance
lives in each rank of a trainer worker group. The driver never sees the
model, only these calls; algorithm code (losses) arrives as a picklable `loss_fn` (see
`rlhf.algos.losses` for its contract), so engines know nothing of the algorithm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tensordict import TensorDict

# loss_fn(out, batch) -> (loss_sum, stats); `loss_fn.needs` names what `out` must hold
# ("logprobs", "entropy", "values"). See rlhf/algos/losses.py for the full contract.
LossFn = Callable[[dict, TensorDict], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters on the matched linear layers (W + alpha/rank * B @ A, B starting at 0):
    only A and B train, the rest of the model is frozen. Exported weights are merged."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]  # module-name patterns with * wildcards, e.g. ("*_proj",)
    recompute: bool = False  # recompute activations in backward (less memory, more time)


@dataclass(frozen=True)
class EngineConfig:
    dtype: str  # compute dtype: float32 | bfloat16 | float16 (master weights and optimizer stay float32)
    micro_batch_size: int
    max_grad_norm: float
    seed: int
    trust_remote_code: bool  # run Python code shipped with the model folder (HF auto_map)
    tp_size: int = 1  # tensor-parallel ranks per model replica
    ep_size: int = 1  # expert-parallel ranks (MoE models)
    packing: bool = False  # micro-batches as one row of real tokens (no padding), sequences kept apart by positions
    max_tokens_per_micro_batch: int | None = None  # token budget per micro-batch (None: micro_batch_size rows)
    lora: LoraConfig | None = None  # None: every weight trains


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and its LR schedule; set per stage (a stage starts a fresh optimizer)."""

    lr: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    total_steps: int
    lr_schedule: str  # constant | cosine | linear


class InferenceEngine(ABC):
    """Forward passes and weight export. Ranks form data-parallel groups (each group holds one
    model replica, split by tensor or expert parallelism): every rank of a group must get the
    same rows, and `dp_rank` says which shard of a batch a rank is given."""

    dp_rank: int
    dp_size: int

    @abstractmethod
    def logprobs(self, batch: TensorDict) -> torch.Tensor:
        """Per-token log-probs in the batch layout ([B, T], column t = log p(token t | < t))."""

    @abstractmethod
    def values(self, batch: TensorDict) -> torch.Tensor:
        """A critic's per-token values in the batch layout ([B, T], column t = V(tokens < t))."""

    @abstractmethod
    def export_weights(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Full tensors under Hugging Face names, one at a time, on this engine's device, cast to
        `dtype` if given. A collective: every rank must iterate it to the end (the full tensors
        are gathered from the shards as they are produced), and every rank gets every tensor."""

    @abstractmethod
    def parameter_counts(self) -> dict[str, int]:
        """{"trainable", "total"} parameters of the whole model, and "adapted_layers" (LoRA)."""

    @abstractmethod
    def offload(self, what: str) -> None:
        """Move "optimizer" state (and gradients) or "all" (weights too) to CPU, freeing the
        accelerator for a colocated rollout engine (no-op on CPU)."""

    @abstractmethod
    def onload(self) -> None:
        """Bring back what `offload` moved."""


class TrainingEngine(InferenceEngine):
    @abstractmethod
    def configure_optimizer(self, cfg: OptimConfig) -> None:
        """Start a fresh optimizer and LR schedule (at the start of each training stage)."""

    @abstractmethod
    def train_step(self, batch: TensorDict, loss_fn: LossFn, normaliser: float) -> dict[str, float]:
        """One optimizer step over this rank's shard of the batch.

        `normaliser` is computed by the driver over the whole batch across all ranks (e.g. its
        number of loss tokens): the loss is divided by it, so the step does not depend on how
        the batch was split into ranks and micro-batches.
        """

    @abstractmethod
    def base_logprobs(self, batch: TensorDict) -> torch.Tensor:
        """With LoRA: `logprobs` with the adapters off, i.e. of the model this training stage
        started from (its adapters start at zero), which serves as the reference policy."""

    @abstractmethod
    def last_logprobs(self) -> torch.Tensor:
        """The log-probs of the last `train_step`'s forward passes (before its update), for this
        rank's rows in the batch layout: an on-policy step's old log-probs, at no extra cost."""

    @abstractmethod
    def save(self, path: str) -> None:
        """Write an HF-format checkpoint folder (collective; rank 0 writes)."""

    @abstractmethod
    def save_state(self, path: str) -> None:
        """Write what an exact resume needs: weights, optimizer, LR schedule and RNG state of every
        rank, under folder `path` (collective; every rank writes its own shards)."""

    @abstractmethod
    def load_state(self, path: str) -> None:
        """Restore a `save_state` folder into this engine, built with the same model, world size
        and optimizer config (collective)."""
