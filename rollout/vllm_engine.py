"""vLLM as the rollout engine: one `LLM` per Ray actor, TP inside vLLM, weights pushed in place."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
from tensordict import TensorDict

from core import quiet
from core.batch import pack, scatter_response_values
from rollout.base import RolloutEngine, Sampling, Trajectories
from rollout.requests import RequestDriver
from weight_sync.base import checkpoint_weight_names
from weight_sync.buckets import Bucket


@dataclass(frozen=True)
class VLLMConfig:
    dtype: str
    tensor_parallel_size: int
    max_model_len: int
    kv_cache_bytes: int  # CPU: the KV cache size (vLLM's default sizing fails on CPU)
    gpu_memory_utilization: float  # CUDA: the share of GPU memory vLLM may take
    seed: int
    enforce_eager: bool | None  # None: eager on CPU, CUDA graphs on GPU
    max_num_seqs: int | None  # None: vLLM's default
    max_num_batched_tokens: int | None
    weight_transport: str  # the weight_sync transport that feeds this engine
    trust_remote_code: bool  # run Python code shipped with the model folder (HF auto_map)
    gpu_share: float  # the share of its GPU each vLLM worker takes (with ray_bundles)
    # Tensor parallel on GPUs: the bundles of this process's placement group where vLLM's Ray
    # executor starts one worker each (tensor_parallel_size of them); empty: vLLM runs here.
    ray_bundles: tuple[int, ...]
    sleep: bool = False  # sleep mode on (CUDA): `sleep` and `wake` free and restore GPU memory
    # a push lands in the requests in flight (which continue on the new weights); otherwise it waits
    # for them to finish, and requests arriving meanwhile start after it
    partial_rollouts: bool = False


def sampling_params(sampling: Sampling, seed: int | None, n: int | None = None, max_tokens: int | None = None):
    """vLLM's sampling parameters for `sampling`: log-probs of the sampled tokens as one flat list
    per sample, text only where stop strings need it."""
    from vllm import SamplingParams

    return SamplingParams(
        n=sampling.n if n is None else n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        max_tokens=sampling.max_new_tokens if max_tokens is None else max_tokens,
        logprobs=0,
        # one flat list per sample instead of a dict and an object per token (vLLM's GC and ours)
        flat_logprobs=True,
        # Stop strings are matched on the text; without them no text is needed.
        detokenize=bool(sampling.stop),
        stop=list(sampling.stop) or None,
        include_stop_str_in_output=True,  # the text then matches the token ids, which end with it
        seed=seed,
    )


def _sampled_logprobs(ids: list[int], per_token) -> list[float]:
    """The log-prob of each sampled token. With `logprobs=0` a flat container holds exactly one entry
    per position, the sampled token's, so its list is the answer; otherwise look each token up."""
    if getattr(per_token, "token_ids", None) == ids:
        return per_token.logprobs
    return [lp[t].logprob for t, lp in zip(ids, per_token)]


class VLLMRollout(RolloutEngine):
    def __init__(self, model_path: str, cfg: VLLMConfig):
        t = time.perf_counter()
        quiet.install()  # vLLM's notes on the settings chosen here (already in place in a role process)
        # In-process engine core: starts ~8x faster on CPU and leaves no /dev/shm behind.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.startup = {"vllm import": time.perf_counter() - t}  # seconds of each start-up step
        t = time.perf_counter()
        # A tensor-parallel engine's own process holds no GPU; its workers do.
        cuda = torch.cuda.is_available() or bool(cfg.ray_bundles)
        if cfg.ray_bundles:
            if len(cfg.ray_bundles) != cfg.tensor_parallel_size:
                raise ValueError(f"{len(cfg.ray_bundles)} placement bundles for tensor_parallel_size="
                                 f"{cfg.tensor_parallel_size}: give one bundle per tensor-parallel rank")
            os.environ["VLLM_RAY_BUNDLE_INDICES"] = ",".join(map(str, cfg.ray_bundles))
            os.environ["VLLM_RAY_PER_WORKER_GPUS"] = str(cfg.gpu_share)
        kwargs = dict(
            model=model_path,
            dtype=cfg.dtype,
            tensor_parallel_size=cfg.tensor_parallel_size,
            max_model_len=cfg.max_model_len,
            seed=cfg.seed,
            # CUDA graphs cut generation time by ~40% on GPU; on CPU compilation costs more than it gives.
            enforce_eager=(not cuda) if cfg.enforce_eager is None else cfg.enforce_eager,
            worker_extension_cls="rollout.worker_extension.BucketLoader",
            # Raw log-probs of the model's distribution, i.e. what the trainer computes.
            logprobs_mode="raw_logprobs",
            trust_remote_code=cfg.trust_remote_code,
            load_format="safetensors",  # never unpickle weights
            use_tqdm_on_load=False,  # no progress bar for the weights on the console
        )
        if cfg.ray_bundles:
            kwargs["distributed_executor_backend"] = "ray"
        if cfg.max_num_seqs is not None:
            kwargs["max_num_seqs"] = cfg.max_num_seqs
        if cfg.max_num_batched_tokens is not None:
            kwargs["max_num_batched_tokens"] = cfg.max_num_batched_tokens
        if cfg.weight_transport in ("cuda_ipc", "nccl"):
            kwargs["weight_transfer_config"] = {"backend": {"cuda_ipc": "ipc", "nccl": "nccl"}[cfg.weight_transport]}
        if cuda:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = cfg.sleep
        else:
            kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_bytes
            # After a partial prefill vLLM rewinds the request's seeded generator, which a CPU
            # generator cannot do (docs/known-issues.md). Without chunked prefill every prompt is
            # prefilled in one step: vLLM then needs a token budget of at least max_model_len
            # (its default becomes max(max_model_len, 4096); a smaller rollout.max_num_batched_tokens
            # is refused at config time).
            kwargs["enable_chunked_prefill"] = False
        if not cuda and kwargs["enforce_eager"]:
            # Eager on CPU, the sampler's helpers too: vLLM wraps two of them (a log-prob rank count
            # and a random sampler) in torch.compile, which on the first generation had inductor
            # compile C++ (~15 s, ~4 s from a warm cache) for what eager does in microseconds here.
            torch.compiler.set_stance("force_eager")
        self.llm = LLM(**kwargs)
        self.requests = RequestDriver(self.llm)
        self._runners: dict = {}  # per agent config: its trajectory runner (environment, tools, template)
        self.max_model_len = cfg.max_model_len
        # Where vLLM uses weights as loaded (CUDA, unquantized, no MLA, Triton MoE), a push loads
        # straight into the live parameters (see weight_sync.vllm_native).
        self.loads_in_place = all(self.llm.collective_rpc("weights_used_as_loaded"))
        # A tied head travels too, unless vLLM uses the embedding itself as its head (on CPU it
        # keeps a re-packed copy of it that would otherwise go stale).
        tied = bool(getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))
        shared = tied and self.loads_in_place and all(self.llm.collective_rpc("head_is_embedding"))
        self._weight_names = checkpoint_weight_names(model_path, tied and not shared)
        self._clean_at = 0  # requests.added when the prefix cache was last emptied: any added since may have cached prefixes
        self._holding = False  # between begin_push and weights_updated: no engine step
        self._partial = cfg.partial_rollouts
        self.eos_id = self.llm.get_tokenizer().eos_token_id
        self.pad_id = self.llm.get_tokenizer().pad_token_id
        if self.pad_id is None:
            self.pad_id = self.eos_id
        self.startup["engine"] = time.perf_counter() - t

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> TensorDict:
        """The one-turn case of the request loop: each prompt one request of `sampling.n` samples."""
        if sampling.seed is not None and sampling.seed_per_prompt:
            per_prompt = [sampling_params(sampling, sampling.seed + i) for i in range(len(prompt_ids))]
        else:
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            per_prompt = [sampling_params(sampling, None)] * len(prompt_ids)
        t = time.perf_counter()
        base = self.requests.pushes
        outs = self.requests.run(list(zip(prompt_ids, per_prompt)))
        self.timing = {"time/vllm_generate": time.perf_counter() - t}
        t = time.perf_counter()
        prompts, responses, logprobs, groups, truncated, versions = [], [], [], [], [], []
        for gid, out in enumerate(outs):
            for j, comp in enumerate(out.outputs):
                ids = list(comp.token_ids)
                versions.append([v - base for v in self.requests.push_index(out, j)])
                prompts.append(list(out.prompt_token_ids))
                responses.append(ids)
                logprobs.append(_sampled_logprobs(ids, comp.logprobs))
                groups.append(gid)
                truncated.append(comp.finish_reason == "length")
        batch = pack(prompts, responses, self.pad_id)
        batch["rollout_logprobs"] = scatter_response_values(batch, logprobs)
        batch["group_ids"] = torch.tensor(groups)
        batch["truncated"] = torch.tensor(truncated)
        # pushes that landed before each sampled token, since the call began (partial rollouts)
        batch["rollout_versions"] = scatter_response_values(batch, versions).long()
        for out in outs:
            self.requests.forget(out)
        self.timing["time/rollout_postprocess"] = time.perf_counter() - t
        return batch

    def trajectories(self, rows: list[dict], sampling: Sampling, agent) -> Trajectories:
        """`sampling.n` multi-turn trajectories per row (rollout/trajectory.py), in flight at once up
        to `agent.max_in_flight`, each turn a request of one sample. Sample j of row i starts from
        seed `sampling.seed + i + j`, the seed `generate` gives it, so one-turn episodes sample alike."""
        from rollout.trajectory import TrajectoryRunner, stats, to_batch

        runner = self._runners.get(agent)
        if runner is None:
            runner = self._runners[agent] = TrajectoryRunner(agent, self.llm.get_tokenizer(), self._turn, self.max_model_len)
        seeded = sampling.seed is not None and sampling.seed_per_prompt
        if sampling.seed is not None and not seeded:
            torch.manual_seed(sampling.seed)
        jobs = [(row, sampling.seed + i + j if seeded else None, i) for i, row in enumerate(rows) for j in range(sampling.n)]
        t, base = time.perf_counter(), self.requests.pushes
        runs = runner.run_all([r for r, _, _ in jobs], [s for _, s, _ in jobs], sampling)
        for run in runs:  # pushes since the call began, per token (as `generate` gives them)
            run.versions = [max(v - base, 0) for v in run.versions]
        seconds = time.perf_counter() - t
        self.timing = {"time/vllm_generate": seconds}
        return Trajectories(to_batch(runs, [g for _, _, g in jobs], self.pad_id), [r.messages for r in runs],
                            stats(runs, seconds))

    async def _turn(self, ids: list[int], seed: int | None, max_tokens: int, sampling: Sampling):
        from rollout.trajectory import Turn

        got = await self.requests.generate(ids, sampling_params(sampling, seed, 1, max_tokens))
        out, pushes = got.outputs[0], self.requests.push_index(got, 0)
        self.requests.forget(got)
        tokens = list(out.token_ids)
        return Turn(tokens, _sampled_logprobs(tokens, out.logprobs), out.finish_reason, pushes)

    @property
    def weight_names(self) -> list[str]:
        return self._weight_names

    @property
    def num_workers(self) -> int:
        """vLLM's worker processes (tensor x pipeline parallel); each receives every pushed tensor."""
        return self.llm.llm_engine.vllm_config.parallel_config.world_size

    def load_buckets(self, buckets: list[Bucket]) -> None:
        """Host buckets (the object-store transport) loaded by every vLLM worker."""
        with self.requests.paused():
            self.llm.collective_rpc("load_buckets", args=(buckets,))

    def load_in_place(self, update_info: dict, reused: bool) -> None:
        """One payload of vLLM's weight-transfer engine, loaded by every vLLM worker in place."""
        with self.requests.paused():
            self.llm.collective_rpc("load_in_place", args=(update_info, reused))

    def sleep(self) -> None:
        """Weights to CPU, KV cache dropped: the GPU memory goes to the trainers until `wake`."""
        with self.requests.paused():
            self.llm.sleep(level=1)

    def wake(self, tags: list[str]) -> None:
        """Restore "weights" (before a push lands in them) or "kv_cache" (once the trainers have
        moved out), so both never hold the GPU at once."""
        with self.requests.paused():
            self.llm.wake_up(tags=tags)

    def close(self) -> None:
        """Stop the trajectory runners' tool workers and the request loop (requests in flight fail)."""
        for runner in self._runners.values():
            runner.close()
        self.requests.close()

    def begin_push(self) -> None:
        """With partial rollouts the engine stops stepping at once; otherwise it lets the requests
        in flight finish first (a multi-turn trajectory then changes weights between two turns)."""
        if not self._holding:
            self.requests.hold() if self._partial else self.requests.drain()
            self._holding = True

    def weights_updated(self) -> None:
        """After a complete push, still holding the engine's steps. Requests in flight (partial
        rollouts) continue on the new weights: each records how far it got, and all are preempted so
        vLLM recomputes their KV with the new weights before they sample on (vLLM keeps each
        request's sampler state). With none in flight, cached prefixes are dropped here if a
        generation may have left some (no request can start in between)."""
        try:
            with self.requests.paused():
                self.requests.note_push()
                if self.requests.in_flight:  # they go on caching: the drop after they finish stays due
                    self.llm.reset_prefix_cache(reset_running_requests=True)
                else:
                    self._drop_prefixes()
        finally:
            if self._holding:
                self._holding = False
                self.requests.release() if self._partial else self.requests.undrain()

    def generated(self) -> None:
        """After the group collected a generation, while the trainer works: drop the cached prefixes
        now so the push need not, unless another call is still generating (it keeps caching)."""
        with self.requests.paused():
            if not self.requests.in_flight:
                self._drop_prefixes()

    def _drop_prefixes(self) -> None:
        """Cached prefixes hold KV computed with the weights a push replaces. vLLM's reset visits
        every KV block (~12 ms for 3.3M tokens of cache), so it runs after a generation, while the
        trainer works, and a push repeats it only if a request entered the engine since (a turn of a
        trajectory ahead, say, started after the last reset). Call it paused."""
        added = self.requests.added  # read first: a request entering during the reset stays uncovered
        if added != self._clean_at and self.llm.reset_prefix_cache():
            self._clean_at = added
