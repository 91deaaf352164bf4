"""Stop strings (`rl.stop`): vLLM ends each response at the first stop string it produces, keeping
it. Reference: the same seeded samples generated without stop strings, cut by a plain loop at
the first token whose text completes a stop string."""

import os

import pytest
from transformers import AutoTokenizer

from rlhf.config import ConfigError, load_config
from rollout.base import Sampling
from rollout.vllm_engine import VLLMConfig, VLLMRollout

STOP = ("+", "=", "1")


@pytest.fixture(scope="module")
def engine(tiny_model):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    cfg = VLLMConfig("float32", 1, 64, 32 << 20, 0.5, 0, enforce_eager=None, max_num_seqs=None,
                     max_num_batched_tokens=None, weight_transport="object_store", trust_remote_code=False,
                              gpu_share=0.0, ray_bundles=())
    return VLLMRollout(tiny_model, cfg)


def responses(batch) -> list[list[int]]:
    mask = batch["response_mask"].bool()
    return [batch["input_ids"][i][mask[i]].tolist() for i in range(len(mask))]


def test_responses_end_at_the_first_stop_string(engine, tiny_model, task):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    _, (train, _) = task
    prompts = [tok(p.prompt).input_ids for p in train[:32]]
    # seeded per prompt: the samples agree token for token up to where a stop string ends one
    free = engine.generate(prompts, Sampling(n=4, temperature=1.0, max_new_tokens=12, seed=5))
    stopped = engine.generate(prompts, Sampling(n=4, temperature=1.0, max_new_tokens=12, seed=5, stop=STOP))
    cut = 0
    for ids, mine in zip(responses(free), responses(stopped)):
        want = ids
        for k in range(1, len(ids) + 1):
            if any(s in tok.decode(ids[:k]) for s in STOP):
                want = ids[:k]
                break
        cut += len(want) < len(ids)
        assert mine == want, (tok.decode(ids), tok.decode(mine))
    assert cut >= 3  # the stop strings did end some responses early


def test_empty_stop_string_is_refused():
    with pytest.raises(ConfigError, match="rl.stop"):
        load_config(['rl.stop=["", "x"]'])
