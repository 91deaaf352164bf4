"""The two ends of a weight push, and the check that a push was whole."""

from __future__ import annotations

import json
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


class WeightSyncError(RuntimeError):
    """A push that would leave the rollout engine serving stale or wrong weights."""


class WeightSender(ABC):
    """Trainer side, on every rank of the trainer group: `send` is a collective (every rank
    iterates the full tensors, which are gathered from the shards as they are produced).

    Only tensors the rollout model has (`names`) travel: a trainer may hold extra state (a
    buffer, a tied copy) that a checkpoint does not. A misnamed weight is therefore not sent,
    and the receiver's completeness check reports the name it did not get.

    `dtype` is the dtype on the wire (None: as exported). A transport that copies every tensor into
    buffers of its own casts on that copy (`casts_in_copy`), so the export need not allocate a cast
    copy of each tensor first."""

    casts_in_copy = False

    def __init__(self, rank: int, receivers: list, bucket_bytes: int, names: list[str],
                 dtype: torch.dtype | None = None):
        self.rank, self.receivers, self.bucket_bytes, self.dtype = rank, receivers, bucket_bytes, dtype
        self.names = set(names)
        self.skipped: set[str] = set()

    def wanted(self, weights: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """The tensors the rollout model has; the others are `skipped`, except the aliases of a
        tensor sent (a tied head where the rollout model uses the embedding as its head)."""
        sent: dict[int, weakref.ref] = {}  # the tensors sent, by id, as long as they live
        for name, tensor in weights:
            if name in self.names:
                sent[id(tensor)] = weakref.ref(tensor)
                yield name, tensor
            elif id(tensor) not in sent or sent[id(tensor)]() is not tensor:
                self.skipped.add(name)

    def push(self, export: Callable[[torch.dtype | None], Iterator[tuple[str, torch.Tensor]]]) -> int:
        """Push every wanted tensor of `export(dtype)` (the engine's `export_weights`) to every
        receiver; return the bytes sent (on rank 0). If sending fails (a receiver died), the rest
        of the export is still gone through before the error is raised: every rank gathers each
        full tensor together, so a rank that stopped early would leave the others waiting in a
        collective, and the group could not push again once the engine is replaced."""
        weights = self.wanted(export(self.export_dtype))
        try:
            return self.send(weights)
        except Exception:
            for _ in weights:
                pass
            raise

    @property
    def export_dtype(self) -> torch.dtype | None:
        """What the export is asked to cast to: nothing when the transport casts as it copies."""
        return None if self.casts_in_copy else self.dtype

    @abstractmethod
    def send(self, weights: Iterator[tuple[str, torch.Tensor]]) -> int:
        """The transport: move these tensors to every receiver (in `self.dtype` when the transport
        `casts_in_copy`); the bytes sent (on rank 0)."""


class WeightReceiver(ABC):
    """Rollout side, in the rollout engine's process. A push is `begin`, any number of `receive`
    calls with the transport's payloads, then `finish`, which fails unless every expected tensor
    arrived: a missing tensor would otherwise leave old weights serving silently."""

    def __init__(self, engine):
        self.engine = engine
        self.expected = set(engine.weight_names)
        self.received: set[str] = set()
        self.busy_s = 0.0  # time spent receiving and loading the last push (its share of the push time)

    def connect(self, info: dict) -> None:
        """Join the sender's channel, for transports that set one up first (NCCL's group)."""
        raise WeightSyncError(f"{type(self).__name__} has no channel to connect; the sender and receiver transports differ")

    def begin(self) -> None:
        t = time.perf_counter()
        self.received = set()
        self._begin()
        self.busy_s = time.perf_counter() - t

    def receive(self, payload) -> None:
        t = time.perf_counter()
        names = self._names(payload)
        unknown = sorted(set(names) - self.expected)
        if unknown:
            raise WeightSyncError(
                f"weight push carries {len(unknown)} tensor name(s) the rollout model does not have, e.g. "
                f"{unknown[:3]}; the trainer and rollout models differ (or the name mapping is wrong)"
            )
        self._receive(payload)
        self.received.update(names)
        self.busy_s += time.perf_counter() - t

    def finish(self) -> int:
        t = time.perf_counter()
        missing = sorted(self.expected - self.received)
        if missing:
            raise WeightSyncError(
                f"weight push is missing {len(missing)} of {len(self.expected)} tensors, e.g. {missing[:3]}; the "
                f"rollout engine would keep serving their old values"
            )
        self._finish()
        self.busy_s += time.perf_counter() - t
        return len(self.received)

    @abstractmethod
    def _names(self, payload) -> list[str]: ...

    def _begin(self) -> None:
        pass

    @abstractmethod
    def _receive(self, payload) -> None: ...

    @abstractmethod
    def _finish(self) -> None: ...


def checkpoint_weight_names(model_path: str, tied: bool) -> list[str]:
    """The tensor names of an HF checkpoint folder, read from its safetensors headers (or index);
    with tied embeddings, plus `lm_head.weight`, which the trainer sends explicitly."""
    from safetensors import safe_open

    folder = Path(model_path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = set(json.loads(index.read_text())["weight_map"])
    else:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise WeightSyncError(f"{folder} has no safetensors files: cannot tell which weights a push must carry")
        names = set()
        for f in files:
            with safe_open(str(f), "pt") as h:
                names.update(h.keys())
    if tied:
        names.add("lm_head.weight")
    return sorted(names)
