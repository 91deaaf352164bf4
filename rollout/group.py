"""Several rollout engines (data parallel) addressed as one: prompts are spread over the engines
in contiguous chunks and the samples come back in prompt order."""

from __future__ import annotations

import dataclasses

import ray
import torch
from tensordict import TensorDict

from rlhf.batch import cat
from rollout.base import Sampling


class RolloutGroup:
    def __init__(self, workers: list, pad_id: int):
        self.workers, self.pad_id = workers, pad_id
        self.timing: dict[str, float] = {}

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling) -> TensorDict:
        chunks = [c.tolist() for c in torch.arange(len(prompt_ids)).tensor_split(len(self.workers)) if len(c)]
        calls = []
        for worker, idx in zip(self.workers, chunks):
            # Prompt i's seed is the round's seed + i wherever it runs: the samples do not depend
            # on how many engines there are.
            part = dataclasses.replace(sampling, seed=None if sampling.seed is None else sampling.seed + idx[0])
            calls.append(worker.generate.remote([prompt_ids[i] for i in idx], part))
        batches = ray.get(calls)
        # the slowest engine's phases: what the step waited for
        timings = self.all("timing")
        self.timing = {k: max(t.get(k, 0.0) for t in timings) for k in timings[0]}
        for batch, idx in zip(batches, chunks):
            batch["group_ids"] = batch["group_ids"] + idx[0]
        return batches[0] if len(batches) == 1 else cat(batches, self.pad_id)

    def all(self, method: str, *args):
        return ray.get([getattr(w, method).remote(*args) for w in self.workers])
