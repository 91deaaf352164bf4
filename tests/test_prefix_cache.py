"""When the vLLM engine drops its cached prefixes (KV computed with weights a push replaces): after
a generation the rollout group saw, while the trainer works, and at a push only if the engine
generated since or that drop failed. vLLM's `LLM` is replaced by a recorder."""

import contextlib
import types

from rollout.base import Sampling
from rollout.vllm_engine import VLLMRollout


class RecordingLLM:
    def __init__(self, resets_succeed=True):
        self.resets, self.resets_succeed = 0, resets_succeed

    def reset_prefix_cache(self) -> bool:
        self.resets += 1
        return self.resets_succeed


def engine(llm) -> VLLMRollout:
    e = VLLMRollout.__new__(VLLMRollout)  # no vLLM engine: only the prefix bookkeeping is under test
    e.llm, e._stale_prefixes, e._holding = llm, False, False
    e.requests = types.SimpleNamespace(paused=contextlib.nullcontext, in_flight=0, pushes=0,
                                       note_push=lambda: None)  # no request loop either
    return e


def test_prefixes_are_dropped_once_per_generation_and_always_before_the_next_one():
    llm = RecordingLLM()
    e = engine(llm)
    e.weights_updated()
    assert llm.resets == 0  # nothing generated yet: nothing cached
    e._stale_prefixes = True  # what generate() sets
    e.generated()  # the group's call after collecting the batch
    e.weights_updated()
    assert llm.resets == 1  # the push finds nothing left to drop
    e._stale_prefixes = True  # a generation the group did not follow up (e.g. a direct call)
    e.weights_updated()
    e.weights_updated()
    assert llm.resets == 2


def test_a_generation_marks_the_prefixes_stale_before_vllm_runs_it():
    """Even a generation that fails part-way may have cached prefixes: the flag is set first."""

    class Failing:
        in_flight = pushes = 0

        def note_push(self):
            pass

        def run(self, *args, **kwargs):
            raise RuntimeError("engine died")

        paused = contextlib.nullcontext

    llm = RecordingLLM()
    e = engine(llm)
    e.requests = Failing()  # the request loop fails in vLLM's step
    e.timing = {}
    try:
        e.generate([[1, 2, 3]], Sampling(n=1, temperature=1.0, max_new_tokens=2))
    except RuntimeError:
        pass
    e.weights_updated()
    assert llm.resets == 1


def test_a_drop_that_vllm_refused_is_done_at_the_push():
    llm = RecordingLLM(resets_succeed=False)  # vLLM refuses while blocks are still in use
    e = engine(llm)
    e._stale_prefixes = True
    e.generated()
    llm.resets_succeed = True
    e.weights_updated()
    e.weights_updated()
    assert llm.resets == 2
