import torch

from core.batch import pack, scatter_response_values, split
from rlhf.data.sampler import Sampler
from weight_sync.buckets import pack_buckets, unpack_bucket


def test_pack_layout():
    b = pack([[5, 6], [7]], [[1, 2, 3], [4]], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 1, 2, 3], [7, 4, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b["response_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    vals = scatter_response_values(b, [[0.1, 0.2, 0.3], [0.4]])
    assert torch.allclose(vals, torch.tensor([[0, 0, 0.1, 0.2, 0.3], [0, 0.4, 0, 0, 0]]))


def test_pack_random_rows_against_a_plain_loop():
    import random

    rng = random.Random(0)
    prompts = [[rng.randrange(50) for _ in range(rng.randint(1, 9))] for _ in range(40)]
    responses = [[rng.randrange(50) for _ in range(rng.randint(0, 12))] for _ in range(40)]
    b = pack(prompts, responses, pad_id=99)
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    vals = [[rng.random() for _ in r] for r in responses]
    out = scatter_response_values(b, vals)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n = len(p) + len(r)
        assert b["input_ids"][i].tolist() == p + r + [99] * (width - n)
        assert b["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert b["response_mask"][i].tolist() == [0] * len(p) + [1] * len(r) + [0] * (width - n)
        assert b["position_ids"][i].tolist() == list(range(width))
        assert out[i, len(p) : n].tolist() == torch.tensor(vals[i], dtype=torch.float32).tolist()
        assert out[i, : len(p)].abs().sum() == 0 and out[i, n:].abs().sum() == 0


def test_sampled_logprobs_from_flat_and_per_token_containers():
    from vllm.logprobs import FlatLogprobs, Logprob

    from rollout.vllm_engine import _sampled_logprobs

    ids = [4, 9, 4]
    per_token = [{4: Logprob(-0.5)}, {9: Logprob(-1.5), 2: Logprob(-0.1)}, {4: Logprob(-2.5)}]
    flat = FlatLogprobs()
    for position, t in zip(per_token, ids):
        flat.append({t: position[t]})  # logprobs=0: only the sampled token per position
    assert _sampled_logprobs(ids, flat) == [-0.5, -1.5, -2.5]
    assert _sampled_logprobs(ids, per_token) == [-0.5, -1.5, -2.5]


def test_split_even_and_in_order():
    b = pack([[1]] * 6, [[2]] * 6, 0)
    b["idx"] = torch.arange(6)
    parts = split(b, 2)
    assert [p["idx"].tolist() for p in parts] == [[0, 1, 2], [3, 4, 5]]


def test_buckets_round_trip_across_boundaries():
    g = torch.Generator().manual_seed(0)
    tensors = [
        ("a", torch.randn(3, 5, generator=g)),
        ("b", torch.randn(100, generator=g).to(torch.bfloat16)),
        ("c", torch.randint(0, 10, (4, 4), generator=g)),
        ("d", torch.randn(2, 2, 2, generator=g).half()),
    ]
    buckets = list(pack_buckets(tensors, bucket_bytes=128))
    assert len(buckets) > 1  # forced over several buckets
    out = [pair for b in buckets for pair in unpack_bucket(b)]
    assert [n for n, _ in out] == [n for n, _ in tensors]
    for (_, x), (_, y) in zip(tensors, out):
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)


def test_sampler_resumes_exactly():
    s = Sampler(list(range(10)), seed=3)
    first = s.next(7)
    state = s.state_dict()
    rest = s.next(8)  # crosses an epoch boundary
    assert sorted(first + rest[:3]) == list(range(10))
    r = Sampler(list(range(10)), seed=3)
    r.load_state_dict(state)
    assert r.next(8) == rest
