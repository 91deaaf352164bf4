"""A vLLM rollout engine in the test's own process (no Ray), for the tests that drive it directly."""

import contextlib


@contextlib.contextmanager
def local_vllm(model_path: str, max_model_len: int, partial_rollouts: bool = False):
    from rollout.vllm_engine import VLLMConfig, VLLMRollout

    cfg = VLLMConfig(dtype="float32", tensor_parallel_size=1, max_model_len=max_model_len, kv_cache_bytes=64 << 20,
                     gpu_memory_utilization=0.5, seed=0, enforce_eager=None, max_num_seqs=None,
                     max_num_batched_tokens=None, weight_transport="object_store", trust_remote_code=False,
                     gpu_share=0.0, ray_bundles=(), partial_rollouts=partial_rollouts)
    engine = VLLMRollout(model_path, cfg)
    try:
        yield engine
    finally:
        engine.close()
