"""Deterministic epoch-wise shuffling with a position that can be saved and restored."""

from __future__ import annotations

import random
from typing import Generic, TypeVar

T = TypeVar("T")


class Sampler(Generic[T]):
    def __init__(self, items: list[T], seed: int):
        if not items:
            raise ValueError("cannot sample from an empty dataset")
        self.items, self.seed = items, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle(0)

    def _shuffle(self, epoch: int) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[T]:
        out = []
        while len(out) < k:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle(self.epoch)
            out.append(self.items[self._order[self.pos]])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle(self.epoch)
