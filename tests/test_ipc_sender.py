"""weight_sync/cuda_ipc.py's bucketing and buffer reuse, on CPU: IPC handles and Ray are faked so
that an engine reads a shared buffer only when the trainer waits on its call (as a real engine
may read it any time before), so a buffer refilled too early shows as wrong weights."""

from __future__ import annotations

import pytest
import torch

import weight_sync.cuda_ipc as ipc


class Deferred:
    def __init__(self, fn, *args):
        self.fn, self.args, self.done = fn, args, False

    def run(self):
        if not self.done:
            self.done = True
            self.fn(*self.args)


class FakeRay:
    """`ray.get` runs the engines' pending calls in the order they were issued (an actor's order),
    up to the last one asked for."""

    def __init__(self):
        self.issued: list[Deferred] = []

    def get(self, refs):
        if refs:
            last = max(self.issued.index(r) for r in refs)
            for call in self.issued[: last + 1]:
                call.run()


class Method:
    def __init__(self, fake_ray, fn):
        self.fake_ray, self.fn = fake_ray, fn

    def remote(self, *args):
        call = Deferred(self.fn, *args)
        self.fake_ray.issued.append(call)
        return call


class Engine:
    """Reads each tensor out of the shared bytes named by the handle (here, the buffer itself)."""

    def __init__(self, fake_ray):
        self.got: dict[str, torch.Tensor] = {}
        self.open, self.pushes = False, 0
        self.begin_weight_update = Method(fake_ray, self._begin)
        self.finish_weight_update = Method(fake_ray, self._finish)
        self.receive_weights = Method(fake_ray, self._receive)

    def _begin(self):
        assert not self.open
        self.open, self.got = True, {}

    def _finish(self):
        assert self.open
        self.open, self.pushes = False, self.pushes + 1

    def _receive(self, info, begin=False, finish=False):
        if begin:
            self._begin()
        assert self.open
        shared = info["ipc_handles"]["gpu"]
        assert shared.dtype == torch.uint8 and shared.dim() == 1
        offset = 0
        for name, dtype, shape, size in zip(info["names"], info["dtype_names"], info["shapes"], info["tensor_sizes"]):
            self.got[name] = shared[offset : offset + size].view(getattr(torch, dtype)).view(shape).clone()
            offset += size
        if finish:
            self._finish()


def weights(seed: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = [(f"layer{i}.w", torch.randn(16, 16, generator=g)) for i in range(7)]  # 1 KiB each in float32
    out.insert(3, ("embed", torch.randn(40, 16, generator=g)))  # 2.5 KiB: larger than a bucket
    out.append(("norm", torch.randn(16, generator=g).to(torch.bfloat16)))
    return out


@pytest.mark.parametrize("dtype,bucket_bytes,batch_bytes", [(None, 2100, 1 << 27), (torch.bfloat16, 1100, 1 << 27),
                                                             (torch.bfloat16, 1100, 600)])
def test_every_tensor_arrives_intact_push_after_push(monkeypatch, dtype, bucket_bytes, batch_bytes):
    """As exported (dtype None) or cast on the way into the buffers (bfloat16); either way the
    embedding is larger than a bucket and travels on its own. With a 600-byte batch, a bucket's
    copies run in several foreach calls (as a large model's do)."""
    fake_ray = FakeRay()
    monkeypatch.setattr(ipc, "_BATCH_BYTES", batch_bytes)
    monkeypatch.setattr(ipc, "ray", fake_ray)
    monkeypatch.setattr(ipc, "_share", lambda t: {"gpu": t})
    engines = [Engine(fake_ray), Engine(fake_ray)]
    sender = ipc.CudaIpcSender(0, engines, bucket_bytes=bucket_bytes, names=[n for n, _ in weights(0)], dtype=dtype)
    exported_as = []

    def export(as_dtype):
        exported_as.append(as_dtype)
        return iter(sent)

    for seed in range(3):  # the buffers are reused from push to push
        sent = weights(seed)
        want = {n: t.to(dtype) if dtype is not None else t for n, t in sent}
        assert sender.push(export) == sum(t.numel() * t.element_size() for t in want.values())
        for engine in engines:
            assert engine.pushes == seed + 1 and not engine.open
            assert set(engine.got) == set(want)
            for name, t in want.items():
                assert engine.got[name].dtype == t.dtype and torch.equal(engine.got[name], t), (seed, name)
    assert exported_as == [None] * 3  # the sender casts as it copies: the export is not asked to
    assert all(call.done for call in fake_ray.issued)
    assert len(sender.buffers) == 2 and all(b.numel() == bucket_bytes for b in sender.buffers)


@pytest.mark.parametrize("first", ["embed", "layer0.w"])
def test_a_model_that_fits_one_bucket_holds_one_buffer(monkeypatch, first):
    """A push that fits one bucket never makes the second buffer; a tensor larger than a bucket may
    come before any buffer exists."""
    fake_ray = FakeRay()
    monkeypatch.setattr(ipc, "ray", fake_ray)
    monkeypatch.setattr(ipc, "_share", lambda t: {"gpu": t})
    engine = Engine(fake_ray)
    for bucket_bytes in (1 << 20, 1100):
        sent = sorted(weights(1), key=lambda nt: nt[0] != first)
        sender = ipc.CudaIpcSender(0, [engine], bucket_bytes=bucket_bytes, names=[n for n, _ in sent])
        sender.push(lambda _: iter(sent))
        assert set(engine.got) == {n for n, _ in sent}
        assert all(torch.equal(engine.got[n], t) for n, t in sent)
        assert len(sender.buffers) == (1 if bucket_bytes == 1 << 20 else 2)
