"""Pushes mid-generation on the real vLLM engine (in this process, the tiny model). With partial
rollouts new weights land in the requests in flight, which continue on them; without, the push
waits for them and requests arriving meanwhile start after it (the turns of a multi-turn
trajectory). Every token's recorded policy version, and its log-prob, are checked against a plain
HF forward of the weights of that version."""

import threading
import time

import pytest
import torch
from local_vllm import local_vllm
from transformers import AutoModelForCausalLM

from rollout.base import Sampling
from rollout.vllm_engine import _sampled_logprobs, sampling_params
from weight_sync.buckets import pack_buckets

N_TOKENS = 24


@pytest.fixture(scope="module")
def engine(tiny_model):
    with local_vllm(tiny_model, 64, partial_rollouts=True) as e:
        yield e


def _hf_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) at column t (column 0: 0), the batch layout's convention."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return torch.cat([torch.zeros(1), logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]])


def _push(engine, model) -> None:
    """A whole push as the object-store transport makes it: begin, the buckets, then the end."""
    engine.begin_push()
    engine.load_buckets(list(pack_buckets(model.state_dict().items(), 1 << 20)))
    engine.weights_updated()


def _two_versions(tiny_model):
    before = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    after = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in after.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return before, after


def test_a_push_mid_generation_lands_in_the_requests_in_flight(engine, tiny_model):
    before, after = _two_versions(tiny_model)

    # Engine steps are counted; after the 6th (a prefill and a few tokens), the push goes in.
    steps, reached = [0], threading.Event()
    step = engine.requests.engine.step

    def counting_step():
        out = step()
        steps[0] += 1
        if steps[0] == 6:
            reached.set()
        return out

    engine.requests.engine.step = counting_step
    prompts = [[1, 5 + i, 9, 12 + i] for i in range(6)]
    sampling = Sampling(n=2, temperature=1.0, max_new_tokens=N_TOKENS, seed=3)
    got = {}
    try:
        worker = threading.Thread(target=lambda: got.setdefault("batch", engine.generate(prompts, sampling)))
        worker.start()
        assert reached.wait(120)
        _push(engine, after)
        worker.join(120)
    finally:
        engine.requests.engine.step = step
    batch = got["batch"]

    versions, mask = batch["rollout_versions"], batch["response_mask"].bool()
    crossed = 0
    for row in range(batch.batch_size[0]):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        m = mask[row][: len(ids)]
        v = versions[row][: len(ids)][m]
        # versions never go down along a sample, and are 0 (started on) or 1 (pushed mid-way)
        assert set(v.tolist()) <= {0, 1} and (v[1:] >= v[:-1]).all()
        crossed += bool(v[0] == 0 and v[-1] == 1)
        vllm = batch["rollout_logprobs"][row][: len(ids)][m]
        want = torch.where(v == 1, _hf_logprobs(after, ids)[m], _hf_logprobs(before, ids)[m])
        other = torch.where(v == 1, _hf_logprobs(before, ids)[m], _hf_logprobs(after, ids)[m])
        assert (vllm - want).abs().max() < 1e-4, (row, v.tolist(), (vllm - want).abs().tolist())
        assert (vllm - other).abs().max() > 1e-3  # the two versions' log-probs are told apart
    assert crossed >= 6  # most samples were in flight at the push (some may have ended early)
    # nothing in flight now: a push lands between generations, and the next samples are all version 0
    _push(engine, before)
    again = engine.generate(prompts[:2], Sampling(n=1, temperature=1.0, max_new_tokens=4, seed=1))
    assert int(again["rollout_versions"].max()) == 0


def test_without_partial_rollouts_a_push_lands_between_requests(tiny_model):
    """The push begins after the 6th engine step of a generation; a request arriving while it
    waits (a trajectory's next turn) is queued. The generation finishes on version 0, the late
    request samples on version 1 from its first token."""
    before, after = _two_versions(tiny_model)
    with local_vllm(tiny_model, 64) as engine:
        requests, late = engine.requests, {}
        step = requests.engine.step
        steps, reached = [0], threading.Event()

        def counting_step():
            out = step()
            steps[0] += 1
            if steps[0] == 6:
                reached.set()
                deadline = time.monotonic() + 60
                while not requests.draining and time.monotonic() < deadline:  # the push has begun
                    time.sleep(0.01)
                assert requests.draining and requests.in_flight  # the generation is still running
                late["future"] = requests.submit([1, 7, 9, 30], sampling_params(late_sampling, 11, 1))
            return out

        late_sampling = Sampling(n=1, temperature=1.0, max_new_tokens=N_TOKENS)
        requests.engine.step = counting_step
        prompts = [[1, 5 + i, 9, 12 + i] for i in range(6)]
        got = {}
        try:
            worker = threading.Thread(target=lambda: got.setdefault(
                "batch", engine.generate(prompts, Sampling(n=2, temperature=1.0, max_new_tokens=N_TOKENS, seed=3))))
            worker.start()
            assert reached.wait(120)
            _push(engine, after)
            worker.join(120)
            out = late["future"].result(120)
        finally:
            requests.engine.step = step

        batch = got["batch"]
        mask = batch["response_mask"].bool()
        assert int(batch["rollout_versions"].max()) == 0  # every token of the generation: the old weights
        for row in range(batch.batch_size[0]):
            ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
            m = mask[row][: len(ids)]
            vllm = batch["rollout_logprobs"][row][: len(ids)][m]
            assert (vllm - _hf_logprobs(before, ids)[m]).abs().max() < 1e-4
        pushes = requests.push_index(out, 0)
        assert pushes and set(pushes) == {requests.pushes}  # started after the push, wholly on it
        ids = [1, 7, 9, 30] + list(out.outputs[0].token_ids)
        vllm = torch.tensor(_sampled_logprobs(list(out.outputs[0].token_ids), out.outputs[0].logprobs))
        n = len(out.outputs[0].token_ids)
        assert (vllm - _hf_logprobs(after, ids)[-n:]).abs().max() < 1e-4
        assert (vllm - _hf_logprobs(before, ids)[-n:]).abs().max() > 1e-3
