"""When the vLLM engine drops its cached prefixes (KV computed with weights a push replaces): after
a generation the rollout group saw, while the trainer works, and at a push only if a request
entered the engine since the last drop, or that drop failed. vLLM's `LLM` is replaced by a
recorder, the request loop by a counter of the requests that entered the engine."""

import contextlib
import types

from rollout.vllm_engine import VLLMRollout


class RecordingLLM:
    def __init__(self, resets_succeed=True):
        self.resets, self.resets_succeed = 0, resets_succeed

    def reset_prefix_cache(self, reset_running_requests: bool = False) -> bool:
        self.resets += 1
        return self.resets_succeed


def engine(llm) -> VLLMRollout:
    e = VLLMRollout.__new__(VLLMRollout)  # no vLLM engine: only the prefix bookkeeping is under test
    e.llm, e._clean_at, e._holding = llm, 0, False
    e.requests = types.SimpleNamespace(paused=contextlib.nullcontext, in_flight=0, pushes=0, added=0,
                                       note_push=lambda: None)  # no request loop either
    return e


def test_prefixes_are_dropped_once_per_generation_and_always_before_the_next_one():
    llm = RecordingLLM()
    e = engine(llm)
    e.weights_updated()
    assert llm.resets == 0  # nothing generated yet: nothing cached
    e.requests.added += 8  # a generation's requests entered the engine
    e.generated()  # the group's call after collecting the batch
    e.weights_updated()
    assert llm.resets == 1  # the push finds nothing left to drop
    e.requests.added += 1  # a generation the group did not follow up (e.g. a direct call)
    e.weights_updated()
    e.weights_updated()
    assert llm.resets == 2


def test_a_turn_that_entered_after_the_drop_is_dropped_at_the_push():
    """Multi-turn batches ahead: one batch is collected (its drop runs, nothing in the engine)
    while another batch's trajectories wait on tools; one of them sends its next turn, which
    finishes before the push. Nothing is in flight at the push, yet that turn cached prefixes."""
    llm = RecordingLLM()
    e = engine(llm)
    e.requests.added += 64
    e.generated()
    assert llm.resets == 1
    e.requests.added += 1  # the other batch's next turn, finished before the push
    e.weights_updated()
    assert llm.resets == 2


def test_a_drop_that_vllm_refused_is_done_at_the_push():
    llm = RecordingLLM(resets_succeed=False)  # vLLM refuses while blocks are still in use
    e = engine(llm)
    e.requests.added += 1
    e.generated()
    llm.resets_succeed = True
    e.weights_updated()
    e.weights_updated()
    assert llm.resets == 2


def test_requests_that_go_on_after_a_push_leave_the_drop_due():
    """Partial rollouts: a push lands while requests run; the reset then clears what they had, but
    they go on caching on the new weights, so the drop after they finish must still run (before
    the next push, an evaluation, or the next batch)."""
    llm = RecordingLLM()
    e = engine(llm)
    e.requests.added += 8
    e.requests.in_flight = 8
    e.weights_updated()  # the push, with the requests in flight
    assert llm.resets == 1
    e.requests.in_flight = 0
    e.generated()  # the batch collected
    assert llm.resets == 2
