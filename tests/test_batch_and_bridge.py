import torch

from rlhf.batch import pack, scatter_response_values, split
from rlhf.data.sampler import Sampler
from weight_sync.buckets import pack_buckets, unpack_bucket


def test_pack_layout():
    b = pack([[5, 6], [7]], [[1, 2, 3], [4]], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 1, 2, 3], [7, 4, 0, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b["response_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
    vals = scatter_response_values(b, [[0.1, 0.2, 0.3], [0.4]])
    assert torch.allclose(vals, torch.tensor([[0, 0, 0.1, 0.2, 0.3], [0, 0.4, 0, 0, 0]]))


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
