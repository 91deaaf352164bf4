"""A push's loading recorded once as plain copies, then replayed.

vLLM's `model.load_weights` maps each checkpoint tensor onto its parameters in Python (fused q/k/v
and gate/up, the tensor-parallel shard, vocabulary padding): about 80 us a tensor, most of a
push's time on a GPU, and the same every push, since the names, shapes and the parameters never
change. So the first push of a given layout runs `load_weights` under a dispatch mode that sees
every tensor operation; if all it did was take views and copy pushed data into parameters (or fill
parameter padding with a constant), those copies are the whole effect, and later pushes of the
same layout replay them directly: each source is the same view of the new push's tensor, each
destination the same view of the parameter, and a run of copies whose destinations do not overlap
is one `torch._foreach_copy_` (a few kernel launches for a whole bucket). Any other operation (a clone, a cast, arithmetic,
reading a value), or a parameter replaced instead of written into, makes the layout's plan void,
and that layout keeps using `load_weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_COPY, _FILLS = torch.ops.aten.copy_.default, {torch.ops.aten.fill_.Scalar, torch.ops.aten.zero_.default}


class _Void(Exception):
    """The loading did something a replay of copies would not reproduce."""


def _span(t: torch.Tensor) -> tuple[int, int]:
    """The bytes a (possibly strided) tensor's elements lie within."""
    last = sum((n - 1) * st for n, st in zip(t.shape, t.stride())) if t.numel() else -1
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def _spans(weights: list[tuple[str, torch.Tensor]]) -> list[tuple[int, int]]:
    return [_span(t) for _, t in weights]


def _source(spans: list[tuple[int, int]], weights: list[tuple[str, torch.Tensor]], x: torch.Tensor):
    """Which pushed tensor `x` is a view of, and how, or None if it is none of them."""
    for i, (lo, hi) in enumerate(spans):
        if lo <= x.data_ptr() < hi:
            base = weights[i][1]
            if x.dtype != base.dtype or x.untyped_storage().data_ptr() != base.untyped_storage().data_ptr():
                raise _Void(f"a view of pushed tensor {weights[i][0]} with another dtype or storage")
            return i, tuple(x.shape), tuple(x.stride()), x.storage_offset() - base.storage_offset()
    return None


class _Recorder(TorchDispatchMode):
    def __init__(self, weights: list[tuple[str, torch.Tensor]]):
        super().__init__()
        self.weights, self.spans = weights, _spans(weights)
        self.steps: list[tuple] = []  # ("copy", dst, (i, size, stride, offset)) or ("fill", func, dst, args)
        self.void: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.void is None:
            try:
                self._note(func, args, kwargs)
            except Exception as e:  # noqa: BLE001 - anything unforeseen voids the plan; the load went through
                self.void = f"{type(e).__name__}: {e}"
        return out

    def _note(self, func, args, kwargs) -> None:
        if func.is_view:
            return
        if func is _COPY and not kwargs and len(args) == 2:
            dst, src = args
            if _source(self.spans, self.weights, dst) is not None:
                raise _Void("a pushed tensor is written to")
            where = _source(self.spans, self.weights, src)
            if where is None:
                raise _Void("a parameter is copied from something other than pushed data")
            self.steps.append(("copy", dst, where))
        elif func in _FILLS and not kwargs:
            if any(isinstance(a, torch.Tensor) and _source(self.spans, self.weights, a) is not None for a in args):
                raise _Void("a pushed tensor is filled")
            self.steps.append(("fill", func, args[0], args[1:]))
        else:
            raise _Void(f"{func} is neither a view nor a copy")


def _grouped(steps: list[tuple]) -> list[tuple]:
    """The recorded steps with each run of copies into disjoint destinations as one step
    ("copies", dsts, sources); fills, and a copy into memory an earlier copy of the run wrote,
    start a new run, so every write lands in the order the loader made it."""
    plan: list[tuple] = []
    spans: list[tuple[int, int]] = []
    for step in steps:
        if step[0] != "copy":
            plan.append(step)
            continue
        lo, hi = _span(step[1])
        if not plan or plan[-1][0] != "copies" or any(lo < b and a < hi for a, b in spans):
            plan.append(("copies", [], []))
            spans = []
        plan[-1][1].append(step[1])
        plan[-1][2].append(step[2])
        spans.append((lo, hi))
    return plan


def _views(where: list[tuple], weights: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
    """The recorded views (pushed tensor, size, stride, offset) of this push's tensors."""
    out = []
    for i, size, stride, offset in where:
        base = weights[i][1]
        out.append(base.as_strided(size, stride, base.storage_offset() + offset))
    return out


class ReplayLoader:
    """`loader(weights)` loads a list of (name, tensor) into the model as `load_weights` would.

    `loader(weights, pinned=True)`: the caller refills these same tensors in place from push to
    push (CUDA IPC's persistent buffers), so the views a replay copies from are made once per
    layout and kept, which holds that memory until `forget` is told it is gone; pushes into fresh
    memory (NCCL) are not pinned."""

    def __init__(self, load_weights: Callable[[list[tuple[str, torch.Tensor]]], object], model: torch.nn.Module):
        self.load_weights, self.model = load_weights, model
        self.plans: dict[tuple, list | None] = {}  # per layout; None: void, load_weights it is
        self.sources: dict[tuple, tuple] = {}  # per pinned layout: (data pointers, each step's source views)
        self.replayed = 0  # loads done by replay (for tests and benchmarks)

    def __call__(self, weights, pinned: bool = False) -> None:
        weights = list(weights)
        key = tuple((name, tuple(t.shape), t.stride(), t.dtype) for name, t in weights)
        if key not in self.plans:
            recorder = _Recorder(weights)
            before = self._parameters()
            with recorder:
                self.load_weights(weights)
            if recorder.void is None and self._parameters() != before:
                recorder.void = "a parameter was replaced (assigned, not copied into): invisible to the recorder"
            self.plans[key] = None if recorder.void else _grouped(recorder.steps)
            return
        plan = self.plans[key]
        if plan is None:
            self.load_weights(weights)
            return
        ptrs = tuple(t.data_ptr() for _, t in weights) if pinned else None
        kept = self.sources.get(key)
        if kept is not None and kept[0] == ptrs:
            sources = kept[1]
        else:
            sources = [_views(step[2], weights) if step[0] == "copies" else None for step in plan]
            if pinned:
                self.sources[key] = (ptrs, sources)
        with torch.no_grad():
            for step, views in zip(plan, sources):
                if step[0] == "copies":
                    torch._foreach_copy_(step[1], views)
                else:
                    step[1](step[2], *step[3])
        self.replayed += 1

    def forget(self, lo: int, hi: int) -> None:
        """Drop the kept views into the memory [lo, hi) (an unmapped buffer)."""
        for key in [k for k, (ptrs, _) in self.sources.items() if any(lo <= p < hi for p in ptrs)]:
            del self.sources[key]

    def _parameters(self) -> dict[str, tuple]:
        """Where each parameter and buffer lives: an assignment (`param.data = x`) is no tensor
        operation, so only a change here shows it."""
        return {name: (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
                for name, t in chain(self.model.named_parameters(), self.model.named_buffers())}
