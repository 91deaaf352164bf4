"""vLLM as the rollout engine: one `LLM` per Ray actor, TP inside vLLM, weights pushed in place."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from tensordict import TensorDict

from rlhf.batch import pack, scatter_response_values
from rollout.base import RolloutEngine, Sampling
from rollout.bridge import Bucket


@dataclass(frozen=True)
class VLLMConfig:
    dtype: str
    tensor_parallel_size: int
    max_model_len: int
    kv_cache_bytes: int  # CPU: the KV cache size (vLLM's default sizing fails on CPU)
    gpu_memory_utilization: float  # CUDA: the share of GPU memory vLLM may take
    seed: int


class _DropRepeatedNoise(logging.Filter):
    """Drops two harmless vLLM warnings that would otherwise repeat on every step: rotary
    embeddings have no weights to reload, and the CPU backend ignoring a thread-count reset."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("RotaryEmbedding: Failed to load weights" in msg or "torch.set_num_threads" in msg)


class VLLMRollout(RolloutEngine):
    def __init__(self, model_path: str, cfg: VLLMConfig):
        # In-process engine core: starts ~8x faster on CPU and leaves no /dev/shm behind.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        kwargs = dict(
            model=model_path,
            dtype=cfg.dtype,
            tensor_parallel_size=cfg.tensor_parallel_size,
            max_model_len=cfg.max_model_len,
            seed=cfg.seed,
            enforce_eager=True,
            worker_extension_cls="rollout.worker_extension.WeightReceiver",
            # Raw log-probs of the model's distribution, i.e. what the trainer computes.
            logprobs_mode="raw_logprobs",
        )
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        else:
            kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_bytes
        for handler in logging.getLogger("vllm").handlers:
            handler.addFilter(_DropRepeatedNoise())
        self.llm = LLM(**kwargs)
        self.eos_id = self.llm.get_tokenizer().eos_token_id
        self.pad_id = self.llm.get_tokenizer().pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_id

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> TensorDict:
        from vllm import SamplingParams

        def params(seed):
            return SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                logprobs=0,
                detokenize=False,
                seed=seed,
            )

        per_prompt = (
            [params(sampling.seed + i) for i in range(len(prompt_ids))] if sampling.seed is not None else params(None)
        )
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], per_prompt, use_tqdm=False)
        prompts, responses, logprobs, groups, truncated = [], [], [], [], []
        for gid, out in enumerate(outs):
            for comp in out.outputs:
                ids = list(comp.token_ids)
                prompts.append(list(out.prompt_token_ids))
                responses.append(ids)
                logprobs.append([lp[t].logprob for t, lp in zip(ids, comp.logprobs)])
                groups.append(gid)
                truncated.append(comp.finish_reason == "length")
        batch = pack(prompts, responses, self.pad_id)
        batch["rollout_logprobs"] = scatter_response_values(batch, logprobs)
        batch["group_ids"] = torch.tensor(groups)
        batch["truncated"] = torch.tensor(truncated)
        return batch

    def update_weights(self, buckets: list[Bucket]) -> int:
        (loaded, *_) = self.llm.collective_rpc("load_buckets", args=(buckets,))
        # Cached prefixes hold KV computed with the old weights.
        self.llm.reset_prefix_cache()
        return loaded
