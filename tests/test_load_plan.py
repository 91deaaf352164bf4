"""rollout/load_plan.py: loads replayed from a recorded plan equal loads by the model's own
`load_weights`, written here plainly in vLLM's style (fused q/k/v, a tensor-parallel shard, a padded
vocabulary), and a loader doing more than copies is never replayed."""

from __future__ import annotations

import pytest
import torch

from rollout.load_plan import ReplayLoader

H, V, PAD = 8, 10, 16  # hidden, vocabulary, padded vocabulary


class VllmStyle(torch.nn.Module):
    """q, k and v fused in one parameter, an embedding padded to PAD rows, the second of two
    tensor-parallel shards of an MLP weight."""

    def __init__(self, transpose_with_clone: bool = False):
        super().__init__()
        self.qkv = torch.nn.Parameter(torch.zeros(3 * H, H), requires_grad=False)
        self.embed = torch.nn.Parameter(torch.full((PAD, H), 7.0), requires_grad=False)
        self.mlp = torch.nn.Parameter(torch.zeros(H, H), requires_grad=False)
        self.transpose_with_clone = transpose_with_clone

    def load_weights(self, weights) -> None:
        for name, w in weights:
            if name in ("q", "k", "v"):
                shard = "qkv".index(name)
                self.qkv.data.narrow(0, shard * H, H).copy_(w)
            elif name == "embed":
                self.embed[: w.shape[0]].data.copy_(w)
                self.embed[w.shape[0] :].data.fill_(0)
            elif name == "mlp":
                w = w.narrow(1, H, H)  # this rank's half of the columns
                self.mlp.data.copy_(w.t().contiguous() if self.transpose_with_clone else w)


def packed(tensors: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """The tensors back to back in one byte buffer, as a push delivers them (IPC or NCCL)."""
    raw = [t.contiguous().view(-1).view(torch.uint8) for t in tensors.values()]
    buf = torch.cat(raw)
    out, offset = [], 0
    for (name, t), r in zip(tensors.items(), raw):
        out.append((name, buf[offset : offset + r.numel()].view(t.dtype).view(t.shape)))
        offset += r.numel()
    return out


def push(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"q": torch.randn(H, H, generator=g), "k": torch.randn(H, H, generator=g), "v": torch.randn(H, H, generator=g),
            "embed": torch.randn(V, H, generator=g), "mlp": torch.randn(H, 2 * H, generator=g)}


def expected(seed: int, clone: bool = False) -> dict[str, torch.Tensor]:
    ref = VllmStyle(clone)
    ref.load_weights(push(seed).items())
    return {n: p.detach().clone() for n, p in ref.named_parameters()}


def test_replay_equals_load_weights_push_after_push():
    model = VllmStyle()
    loader = ReplayLoader(model.load_weights, model)
    for seed in range(4):  # the first push records; every push lands in a fresh buffer (as over NCCL)
        loader(packed(push(seed)))
        for name, p in model.named_parameters():
            assert torch.equal(p, expected(seed)[name]), (seed, name)
    assert loader.replayed == 3
    # padding rows are zero, though the model started with 7s there
    assert torch.equal(model.embed[V:], torch.zeros(PAD - V, H))


@pytest.mark.parametrize("pinned", [False, True])
def test_replay_reads_a_reused_buffer_in_place(pinned):
    """CUDA IPC reuses its buffers: the same views, new bytes in them (pinned: the replay keeps its
    source views); a push from other memory of the same layout still loads its own bytes."""
    model = VllmStyle()
    loader = ReplayLoader(model.load_weights, model)
    weights = packed(push(0))
    loader(weights, pinned=pinned)
    for seed in (1, 2, 3):
        if seed == 3:  # the other buffer
            weights = packed(push(seed))
        else:
            for (_, t), new in zip(weights, push(seed).values()):
                t.copy_(new)
        loader(weights, pinned=pinned)
        for name, p in model.named_parameters():
            assert torch.equal(p, expected(seed)[name]), (seed, name)
    assert loader.replayed == 3
    assert len(loader.sources) == (1 if pinned else 0)
    storage = weights[0][1].untyped_storage()
    loader.forget(storage.data_ptr(), storage.data_ptr() + storage.nbytes())  # that buffer is unmapped
    assert not loader.sources


def test_a_loader_that_clones_is_never_replayed():
    model = VllmStyle(transpose_with_clone=True)
    loader = ReplayLoader(model.load_weights, model)
    for seed in range(3):
        loader(packed(push(seed)))
        for name, p in model.named_parameters():
            assert torch.equal(p, expected(seed, clone=True)[name])
    assert loader.replayed == 0


def test_a_loader_that_assigns_or_copies_asynchronously_is_never_replayed():
    class Assigns(VllmStyle):
        def load_weights(self, weights) -> None:
            super().load_weights(weights)
            self.mlp.data = self.mlp.data.clone()  # a new tensor: no copy the recorder could see

    class NonBlocking(VllmStyle):
        def load_weights(self, weights) -> None:
            for name, w in weights:
                if name == "embed":
                    self.embed[: w.shape[0]].data.copy_(w, non_blocking=True)
            super().load_weights([(n, w) for n, w in weights if n != "embed"])

    for cls in (Assigns, NonBlocking):
        model = cls()
        loader = ReplayLoader(model.load_weights, model)
        for seed in range(3):
            loader(packed(push(seed)))
            for name, p in model.named_parameters():
                if name != "embed" or cls is Assigns:
                    assert torch.equal(p, expected(seed)[name]), (cls.__name__, seed, name)
        assert loader.replayed == 0, cls.__name__


def test_a_new_layout_records_its_own_plan():
    model = VllmStyle()
    loader = ReplayLoader(model.load_weights, model)
    full = push(0)
    loader(packed({n: full[n] for n in ("q", "k")}))
    loader(packed({n: full[n] for n in ("v", "embed", "mlp")}))
    loader(packed(push(1)))  # three layouts so far, each recorded once
    assert loader.replayed == 0
    loader(packed(push(2)))
    assert loader.replayed == 1
    for name, p in model.named_parameters():
        assert torch.equal(p, expected(2)[name])


def test_writes_to_the_same_memory_keep_their_order():
    """A loader that writes some memory twice in one load (a later copy or fill over an earlier
    copy): the replay, which batches copies, ends as the loader does, with the last write."""

    class Overwrites(VllmStyle):
        def load_weights(self, weights) -> None:
            super().load_weights(weights)
            got = dict(weights)
            self.mlp.data[0].copy_(got["v"][1])  # over a row the last copy wrote
            self.embed[2 : 2 + H].data.copy_(got["q"])  # over rows the embedding was copied into
            self.embed[:4].data.copy_(got["k"][:4])  # over two of those rows again
            self.embed[9:].data.fill_(3.0)  # a fill over row 9 and the padding

    def reference(seed):
        ref = Overwrites()
        ref.load_weights(push(seed).items())
        return {n: p.detach().clone() for n, p in ref.named_parameters()}

    model = Overwrites()
    loader = ReplayLoader(model.load_weights, model)
    for seed in range(4):
        loader(packed(push(seed)))
        want = reference(seed)
        for name, p in model.named_parameters():
            assert torch.equal(p, want[name]), (seed, name)
    assert loader.replayed == 3
    # A CPU foreach copy runs in order anyway; on a GPU its copies run at once, so no run of
    # copies may write an address twice. Every element's address, enumerated plainly:
    def addresses(t):
        idx = torch.arange(t.numel()).view(t.shape)
        flat = sum(i * st for i, st in zip(torch.unravel_index(idx.reshape(-1), t.shape), t.stride()))
        return {t.data_ptr() + int(o) * t.element_size() for o in flat}

    (plan,) = loader.plans.values()
    runs = [step[1] for step in plan if step[0] == "copies"]
    assert len(runs) >= 2  # the overwrites split the copies
    for dsts in runs:
        seen = set()
        for d in dsts:
            assert not seen & addresses(d)
            seen |= addresses(d)
