"""What every engine over a PyTorch module sharded with DTensors (FSDP2, tensor parallel) shares:
micro-batching, the forward pass to per-token quantities, the train step with its reductions,
weight export, HF checkpoints and exact-resume state.

A concrete engine says only how the distributed world starts, how the model is loaded and laid
out on the ranks, and which optimizer and LR schedule it uses (`engines/automodel`, `engines/fsdp`).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from tensordict import TensorDict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers import PreTrainedModel

from engines import micro_batches
from engines.base import EngineConfig, LoraConfig, LossFn, OptimConfig, TrainingEngine
from engines.grads import clip_grad_norm
from engines.ops import token_entropy, token_logprobs, token_values

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


class TorchEngine(TrainingEngine):
    """`head="lm"`: the policy (or a frozen reference); `head="value"`: a critic, the same
    backbone with a scalar value head (initialised to zero, so every rank starts identical).

    Weights and optimizer state are float32 (master weights; with LoRA only the adapters, the
    frozen base is held in the compute dtype); `cfg.dtype` is the compute dtype:
    FSDP2 casts the parameters for forward and backward and reduces gradients in float32, and a
    model that is not FSDP-sharded (one data-parallel rank) computes under autocast instead."""

    def __init__(self, model_path: str, cfg: EngineConfig, trainable: bool, head: str = "lm"):
        self.cfg, self.model_path, self.head = cfg, model_path, head
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.rank, self.world_size = self._init_distributed("nccl" if cuda else "gloo")
        torch.manual_seed(cfg.seed + self.rank)

        dtype = torch_dtype(cfg.dtype)
        # A frozen reference, or a base that LoRA keeps frozen, needs no float32 master copy (LoRA's
        # adapters are float32).
        master = torch.float32 if trainable and cfg.lora is None else dtype
        model = self._load_lm(model_path, master) if head == "lm" else self._load_critic(model_path, master)
        if cfg.lora is not None:
            if not trainable or head != "lm":
                raise ValueError("LoRA adapts a policy that trains (head='lm', trainable=True), not a reference or critic")
            with torch.random.fork_rng(devices=[self.device.index] if cuda else []):
                torch.manual_seed(cfg.seed)  # the same adapters on every rank, whatever the world size
                self._apply_lora(model, cfg.lora)
            _check_adapters(model)
        # Dropout would make the training forward disagree with the log-probs and values taken in
        # eval mode (PPO's ratio would not start at 1): RL trains without it, as SFT here does.
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        self.model, mesh, sharded = self._parallelize(model, dtype)
        # Each training stage starts fresh adapters from these (see `_restart_adapters`).
        self._fresh_a = {name: _local(layer.lora_A.weight).detach().cpu().clone()
                         for name, layer in self._adapters().items()}
        self.tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        # The ranks of one tensor-parallel group hold one replica and see the same rows; losses,
        # metrics and gradients are averaged over the data-parallel axis only.
        dp_mesh = mesh["dp"] if mesh is not None else None
        self.dp_rank = dp_mesh.get_local_rank() if dp_mesh is not None else 0
        self.dp_size = dp_mesh.size() if dp_mesh is not None else 1
        self.dp_group = dp_mesh.get_group() if self.dp_size > 1 else None
        self._autocast = (
            torch.autocast(self.device.type, dtype=dtype) if not sharded and dtype != torch.float32 else None
        )

        self.optimizer = self.scheduler = None
        self._offloaded: list[tuple[dict, str]] = []  # optimizer state entries moved to CPU by `offload`
        self._last_logprobs = torch.zeros(0)
        if not trainable:
            self.model.requires_grad_(False)
            self.model.eval()

    # What a concrete engine provides.

    @abstractmethod
    def _init_distributed(self, backend: str) -> tuple[int, int]:
        """Join the torch.distributed world (env:// from the worker); (rank, world size)."""

    @abstractmethod
    def _load_lm(self, path: str, dtype: torch.dtype) -> torch.nn.Module:
        """The causal LM at `path` in `dtype`, not yet laid out on the ranks."""

    @abstractmethod
    def _parallelize(self, model: torch.nn.Module, dtype: torch.dtype) -> tuple[torch.nn.Module, DeviceMesh | None, bool]:
        """Shard `model` over the ranks by `cfg.tp_size`/`cfg.ep_size` (data parallel over the
        rest) with `dtype` as FSDP2's compute dtype. Returns the model, its device mesh (with a
        "dp" dimension; None for a one-rank world) and whether FSDP2 sharded it."""

    @abstractmethod
    def _build_optimizer(self, cfg: OptimConfig) -> tuple[torch.optim.Optimizer, object]:
        """AdamW over the (sharded) parameters and its LR schedule, whose `step()` advances one
        optimizer step."""

    def _apply_lora(self, model: torch.nn.Module, lora: LoraConfig) -> None:
        """Freeze `model` and add trainable low-rank adapters (modules with `lora_A`, `lora_B` and
        `scale`) to the linear layers `lora.target_modules` matches, before `_parallelize`."""
        raise ValueError(f"{type(self).__name__} has no LoRA; use engine=automodel (NeMo Automodel's LoRA)")

    # Shared behaviour.

    def _adapters(self) -> dict[str, torch.nn.Module]:
        """The LoRA-adapted layers by module name (empty without LoRA)."""
        return _adapted_layers(self.model) if self.cfg.lora is not None else {}

    def parameter_counts(self) -> dict[str, int]:
        counts = {"trainable": 0, "total": 0, "adapted_layers": len(self._adapters())}
        for p in self.model.parameters():
            n = p.numel()  # a DTensor's numel is the full tensor's
            counts["total"] += n
            counts["trainable"] += n if p.requires_grad else 0
        return counts

    def _load_critic(self, path: str, dtype: torch.dtype) -> torch.nn.Module:
        # HF's token-classification head with one label is a value head on the same backbone.
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
        self._reshard()
        self._offloaded = []  # the old optimizer's moments, if offloaded, are dropped with it
        self.optimizer = None
        self.optimizer, self.scheduler = self._build_optimizer(cfg)
        # folded at the stage's first train step (or reference forward), with the weights on the device
        self._restart_pending = bool(self._adapters())

    def _fold_trained_adapters(self) -> None:
        if self._restart_pending:
            self._restart_adapters()
            self._restart_pending = False

    @torch.no_grad()
    def _restart_adapters(self) -> None:
        """Fold trained adapters into their base weights (merged as `export_weights` merges them)
        and start again from the adapters drawn at start-up. A stage then trains adapters on the
        very model the previous stage handed on, exactly as a restarted run does: it loads that
        stage's merged checkpoint and draws the same adapters. The model's function is unchanged.
        A collective (full tensors)."""
        for name, layer in self._adapters().items():
            b = _full(layer.lora_B.weight)
            if not b.any():  # the same answer on every rank: b is whole
                continue
            merged = _merged(_full(layer.weight), layer)
            weight = layer.weight
            if isinstance(weight, DTensor):
                merged = distribute_tensor(merged, weight.device_mesh, weight.placements)
            _local(weight).copy_(_local(merged))
            _local(layer.lora_B.weight).zero_()
            _local(layer.lora_A.weight).copy_(self._fresh_a[name])

    def _forward(self, mb: TensorDict, needs: frozenset) -> dict[str, torch.Tensor]:
        """Per-token quantities of a micro-batch, in its [b, t] layout."""
        mb = mb.to(self.device)
        hf = isinstance(self.model, PreTrainedModel)
        if self.cfg.packing and not hf:
            raise ValueError(
                f"packing=true needs a Hugging Face model class, which reads sequence boundaries from the position "
                f"ids; {type(self.model).__name__} is the engine's own class (it packs another way, not supported "
                f"here yet): set packing=false for this model")
        if self.cfg.packing:
            ids, positions, keep = micro_batches.pack_rows(mb["input_ids"], mb["attention_mask"], mb["position_ids"])
            # No attention mask: the model reads the sequence boundaries from the positions.
            inputs = {"input_ids": ids, "position_ids": positions}
        else:
            inputs = {"input_ids": mb["input_ids"], "attention_mask": mb["attention_mask"], "position_ids": mb["position_ids"]}
        if hf:
            inputs["use_cache"] = False  # no KV cache in training (with one, HF also stops detecting packed rows)
        with self._autocast or contextlib.nullcontext():
            logits = self.model(**inputs).logits
        # Tensor parallel leaves the logits a DTensor: token_logprobs takes it as it is (split over
        # the vocabulary, it is not gathered); values and entropy need it whole (gathered once,
        # simple and differentiable).
        if isinstance(logits, DTensor) and needs & {"values", "entropy"}:
            logits = logits.full_tensor()
        out = {}
        if "logprobs" in needs:
            out["logprobs"] = token_logprobs(logits, inputs["input_ids"])
        if "values" in needs:
            out["values"] = token_values(logits)
        if "entropy" in needs:
            out["entropy"] = token_entropy(logits)
        if self.cfg.packing:
            out = {k: micro_batches.unpack(v, keep) for k, v in out.items()}
        return out

    def _micro_batches(self, batch: TensorDict) -> Iterator[tuple[torch.Tensor, TensorDict]]:
        """(row indices, micro-batch cut to its longest row) pairs covering this rank's rows."""
        lengths = batch["attention_mask"].sum(-1)
        max_tokens = self.cfg.max_tokens_per_micro_batch
        n = micro_batches.count(lengths, self.cfg.micro_batch_size, max_tokens, self.cfg.packing)
        if self.dp_group is not None:
            # Every data-parallel rank runs the same number of forwards, or FSDP's collectives
            # would pair up different micro-batches (and hang on the last one).
            most = torch.tensor([n], device=self.device)
            dist.all_reduce(most, op=dist.ReduceOp.MAX, group=self.dp_group)
            n = int(most)
        for idx in micro_batches.split(lengths, n, max_tokens, self.cfg.packing):
            width = int(lengths[idx].max())
            yield idx, batch[idx].apply(lambda t: t[:, :width] if t.dim() == 2 else t)

    def _reshard(self) -> None:
        """Return every FSDP module to its sharded parameters. A no-grad forward leaves the modules
        that do not reshard after forward (the root, by default) holding unsharded copies in
        place of the registered parameters; an optimizer built then would step those."""
        from torch.distributed.fsdp import FSDPModule

        for module in self.model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def _gathered(self, shape: torch.Size, pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Per-micro-batch [rows, width] results back in the batch layout, on CPU. Assembled on the
        device and copied once at the end: a copy per micro-batch would make the host wait for
        each micro-batch before it could queue the next."""
        out = torch.zeros(shape, dtype=torch.float32, device=self.device)
        for idx, got in pieces:
            out[idx.to(self.device), : got.shape[1]] = got.float()
        return out.cpu()

    @torch.no_grad()
    def _infer(self, batch: TensorDict, key: str) -> torch.Tensor:
        self.model.eval()
        pieces = [(idx, self._forward(mb, frozenset({key}))[key]) for idx, mb in self._micro_batches(batch)]
        self._reshard()
        return self._gathered(batch["input_ids"].shape, pieces)

    def logprobs(self, batch: TensorDict) -> torch.Tensor:
        return self._infer(batch, "logprobs")

    def base_logprobs(self, batch: TensorDict) -> torch.Tensor:
        layers = list(self._adapters().values())
        if not layers:
            raise RuntimeError("base_logprobs: this engine has no LoRA adapters")
        self._fold_trained_adapters()
        scales = [layer.scale for layer in layers]
        for layer in layers:  # the adapter's term becomes an exact zero: W x + 0
            layer.scale = 0.0
        try:
            return self._infer(batch, "logprobs")
        finally:
            for layer, scale in zip(layers, scales):
                layer.scale = scale

    def values(self, batch: TensorDict) -> torch.Tensor:
        return self._infer(batch, "values")

    def train_step(self, batch: TensorDict, loss_fn: LossFn, normaliser: float) -> dict[str, float]:
        if self.optimizer is None:
            raise RuntimeError("train_step before configure_optimizer (or on a frozen engine)")
        self._fold_trained_adapters()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        # FSDP averages gradients over data-parallel ranks; scaling by their number turns that
        # average back into the sum of per-rank contributions, so the result is a global mean.
        scale = self.dp_size / max(normaliser, 1e-12)
        totals: dict[str, torch.Tensor] = {}
        logprobs = []
        for idx, mb in self._micro_batches(batch):
            mb = mb.to(self.device)
            out = self._forward(mb, loss_fn.needs)
            if "logprobs" in out:
                logprobs.append((idx, out["logprobs"].detach()))
            loss_sum, stats = loss_fn(out, mb)
            (loss_sum * scale).backward()
            for k, v in {"loss": loss_sum.detach(), **stats}.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float()
        self._last_logprobs = self._gathered(batch["input_ids"].shape, logprobs)
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
        self.scheduler.step()
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

    def offload(self, what: str) -> None:
        """Free this rank's GPU for the rollout engine: "optimizer" moves the optimizer state to
        CPU (and drops gradients); "all" the weights too. A no-op off CUDA."""
        if self.device.type != "cuda":
            return
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            for state in self.optimizer.state.values():
                for key, value in state.items():
                    # only what lives on the GPU (AdamW keeps its step counts on CPU)
                    if torch.is_tensor(value) and value.device.type == "cuda":
                        state[key] = value.to("cpu", non_blocking=True)
                        self._offloaded.append((state, key))
        if what == "all":
            self._reshard()
            self.model.to("cpu")
        self._offloaded_what = what
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

    def onload(self) -> None:
        """Undo `offload`."""
        if self.device.type != "cuda":
            return
        self.model.to(self.device)
        self._offloaded_what = None
        for state, key in self._offloaded:
            state[key] = state[key].to(self.device, non_blocking=True)
        self._offloaded = []
        torch.cuda.synchronize()

    _offloaded_what: str | None = None
    _restart_pending = False

    @contextlib.contextmanager
    def _weights_on_device(self):
        """Collectives over weights and optimizer state (export, checkpoints) run on the
        backend's device: bring what was offloaded back for them, and move it out again after."""
        what = self._offloaded_what
        if what is not None:
            self.onload()
        try:
            yield
        finally:
            if what is not None:
                self.offload(what)

    def last_logprobs(self) -> torch.Tensor:
        return self._last_logprobs

    def _hf_tensors(self, fqn: str, full: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """The Hugging Face tensors one of the model's own tensors stands for (itself, unless the
        model class names or lays out weights its own way)."""
        yield fqn, full

    def export_weights(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        if self._offloaded_what != "all":  # the weights are on the device (the optimizer state need not be)
            yield from self._export(dtype)
            return
        with self._weights_on_device():
            yield from self._export(dtype)

    def _export(self, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
        self._reshard()
        adapters = self._adapters()
        embed, sent = None, set()
        for fqn, tensor in self.model.state_dict().items():
            if self.tied and fqn == "lm_head.weight":
                continue  # the embedding, yielded as the head below: no second gather, one tensor for both
            owner, _, leaf = fqn.rpartition(".")
            if owner.rpartition(".")[2] in ("lora_A", "lora_B") and owner.rpartition(".")[0] in adapters:
                continue  # folded into its layer's weight below: vLLM and HF checkpoints see one merged weight
            full = _full(tensor)
            if leaf == "weight" and owner in adapters:
                full = _merged(full, adapters[owner])
            full = full.detach().to(dtype) if dtype is not None else full.detach()
            for name, hf in self._hf_tensors(fqn, full):
                if name == "model.embed_tokens.weight":
                    embed = hf
                sent.add(name)
                yield name, hf
        # Where vLLM keeps its own copy of a tied head (on CPU), it must travel too, or go stale.
        if self.tied and embed is not None and "lm_head.weight" not in sent:
            yield "lm_head.weight", embed

    def save(self, path: str) -> None:
        from safetensors.torch import save_file

        # Gathered tensor by tensor (the export's collective), kept on rank 0 only, on CPU.
        sd = {}
        for name, tensor in self.export_weights():
            if self.rank == 0 and not (self.tied and name == "lm_head.weight"):
                sd[name] = tensor.cpu().contiguous()
        if self.rank == 0:
            out = Path(path)
            out.mkdir(parents=True, exist_ok=True)
            save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
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
        with self._weights_on_device():
            self._save_state(path)

    def _save_state(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        self._reshard()
        model_sd, optim_sd = get_state_dict(self.model, self._optimizers())
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
        torch.save(self._local_state(), Path(path) / f"rank{self.rank}.pt")
        if self.world_size > 1:
            dist.barrier()

    def load_state(self, path: str) -> None:
        with self._weights_on_device():
            self._load_state(path)

    def _load_state(self, path: str) -> None:
        """Load a state saved by any layout of this group (world size, tensor-parallel size):
        DCP reshards the weights and optimizer moments onto this layout's shards. What the
        checkpoint cannot map onto this model (another model, another stored dtype) is refused."""
        self._restart_pending = False  # a saved state is past its stage's first step: adapters as saved
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            get_state_dict,
            set_state_dict,
        )

        self._reshard()
        if self.optimizer is not None:
            # get_state_dict creates a fresh optimizer's (empty) moments, so DCP has tensors to load
            # into; it takes gradients left by earlier steps for a sign that they exist, and would
            # then load no moments at all.
            self.optimizer.zero_grad(set_to_none=True)
        model_sd, optim_sd = get_state_dict(self.model, self._optimizers())
        _check_saved_model(path, model_sd)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(self.model, self._optimizers(), model_state_dict=state["model"], optim_state_dict=state["optim"])
        self._load_local_state(Path(path))

    def _load_local_state(self, path: Path) -> None:
        """The per-rank extras. The LR schedule is the same on every rank: any rank's file serves
        (rank 0's where the saving layout had no rank of this number). The RNG: this rank's saved
        state where the saving layout had this rank, else the seed it started with (seed + rank);
        nothing a step computes draws from it (dropout is off; LoRA's adapters are drawn at
        start-up from the seed alone), so either gives the same results."""
        own = path / f"rank{self.rank}.pt"
        source = own if own.is_file() else path / "rank0.pt"
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing: {path} is not a complete state (every saving rank writes "
                                    f"rank<N>.pt); resume from another state")
        extra = torch.load(source, weights_only=True)  # tensors and numbers only: no code can run
        if self.scheduler is not None:
            self.scheduler.load_state_dict(extra["scheduler"])
        if source != own:
            torch.manual_seed(self.cfg.seed + self.rank)
            return
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


def _check_saved_model(path: str, model_sd: dict) -> None:
    """Refuse a state whose weights DCP cannot reshard onto `model_sd` (this engine's model state
    dict): other tensor names or shapes (another model, head or LoRA layout) or another stored
    dtype. Any layout of the same model passes: DCP stores each tensor whole-shaped."""
    import torch.distributed.checkpoint as dcp

    if not (Path(path) / ".metadata").is_file():
        raise FileNotFoundError(f"{path} holds no saved trainer state (no torch.distributed.checkpoint .metadata); "
                                f"point trainer.resume at a state-<stage>-step<N> folder of a run")
    meta = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    saved = {k.removeprefix("model."): v for k, v in meta.items() if k.startswith("model.")}
    fix = "resume with the model (model.path), head and LoRA settings (actor.lora.*) the state was saved with"
    if saved.keys() != model_sd.keys():
        only_saved, only_now = sorted(saved.keys() - model_sd.keys()), sorted(model_sd.keys() - saved.keys())
        raise ValueError(f"the state {path} holds another model: tensors only in the state {only_saved[:3]}, only in "
                         f"this model {only_now[:3]}; {fix}")
    for name, tensor in model_sd.items():
        m = saved[name]
        if tuple(m.size) != tuple(tensor.shape):
            raise ValueError(f"the state {path} holds another model: {name} was saved as {list(m.size)}, this "
                             f"model's is {list(tensor.shape)}; {fix}")
        if m.properties.dtype != tensor.dtype:
            raise ValueError(f"the state {path} stores {name} in {m.properties.dtype}, this engine holds it in "
                             f"{tensor.dtype}: resume with the dtype the state was saved with (actor.dtype, "
                             f"critic.dtype)")


def _adapted_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "lora_B")}


def _check_adapters(model: torch.nn.Module) -> None:
    """What the merged export can serve: every trainable parameter an `A` or `B` of a LoRA layer
    (not an expert adapter of another layout, which it would not merge), and no adapted weight
    shared with another module (a tied LM head's is the embedding: merging into it would change
    the input embeddings too)."""
    layers = _adapted_layers(model)
    known = {f"{n}.{ab}.weight" for n in layers for ab in ("lora_A", "lora_B")}
    other = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in known)
    if other:
        raise ValueError(f"LoRA made parameters trainable that the merged export does not handle: {other[:4]}; narrow "
                         f"actor.lora.target_modules to linear layers (e.g. ['*_proj'])")
    embed = model.get_input_embeddings()
    shared = sorted(n for n, m in layers.items() if embed is not None and m.weight is embed.weight)
    if shared:
        raise ValueError(f"actor.lora.target_modules matches {shared}, whose weight is the input embedding (tied): "
                         f"leave it out of the patterns")


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def _merged(weight: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """A LoRA layer's effective weight, W + scale * B @ A, in float32 then W's dtype."""
    a, b = _full(layer.lora_A.weight.detach()), _full(layer.lora_B.weight.detach())
    return (weight.float() + layer.scale * (b.float() @ a.float())).to(weight.dtype)
