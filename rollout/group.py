"""Several rollout engines (data parallel) addressed as one: prompts are spread over the engines
in contiguous chunks and the samples come back in prompt order.

An engine that dies or hangs during generation is replaced here, and nowhere else: the group
kills it, asks `restart` for a fresh one (same placement, connected to the weight transport and
given the trainer's current weights) and retries the call with the same seeds, so the step's
samples are those the lost engine would have drawn. More than `max_restarts` failures in a row
raise `RolloutFailed`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import ray
import torch
from tensordict import TensorDict

from core.batch import cat
from rollout.base import Sampling


class RolloutFailed(RuntimeError):
    """Rollout engines kept failing after `rollout.max_restarts` restarts in a row."""


class RolloutGroup:
    def __init__(self, workers: list, pad_id: int, restart: Callable[[int, list], object] | None = None,
                 timeout_s: float | None = None, max_restarts: int = 0):
        """`restart(i, workers)`: a fresh engine to replace `workers[i]` (the group's list, which it
        may update in place), ready, connected and synced. `timeout_s`: how long one generation call
        may take before its engine counts as hung (None: no limit)."""
        self.workers, self.pad_id = workers, pad_id
        self.restart, self.timeout_s, self.max_restarts = restart, timeout_s, max_restarts
        self.timing: dict[str, float] = {}
        self.restarts = 0  # engines replaced since the run started

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling, restart: bool = True) -> TensorDict:
        """`restart=False` for a generation running beside the trainer (rl.off_policy_steps=1): a
        replacement would get the trainer's weights mid-update, newer than the samples' claimed
        policy, so a failed engine is killed and `RolloutFailed` raised at once; the next call
        with restarts replaces it."""
        chunks = [c.tolist() for c in torch.arange(len(prompt_ids)).tensor_split(len(self.workers)) if len(c)]
        recovery = 0.0
        for failures in range(self.max_restarts + 1):
            calls = []
            for worker, idx in zip(self.workers, chunks):
                # Prompt i's seed is the round's seed + i wherever it runs: the samples do not depend
                # on how many engines there are.
                part = dataclasses.replace(sampling, seed=None if sampling.seed is None else sampling.seed + idx[0])
                calls.append(worker.generate.remote([prompt_ids[i] for i in idx], part))
            failed = self._failed(calls)
            if not failed:
                break
            if not restart:
                for i in failed:
                    ray.kill(self.workers[i])
                raise RolloutFailed(
                    f"rollout engine(s) {', '.join(f'{i} ({why})' for i, why in failed.items())} failed while "
                    f"generating the next step's samples beside the trainer (rl.off_policy_steps=1), where engines "
                    f"are not replaced. Check the engines' log above (out of memory? a crashed node?)"
                )
            if failures == self.max_restarts or self.restart is None:
                raise RolloutFailed(
                    f"rollout engine(s) {', '.join(f'{i} ({why})' for i, why in failed.items())} failed "
                    f"{failures + 1} time(s) in a row (rollout.max_restarts={self.max_restarts} restarts allowed). "
                    f"Check the engines' log above (out of memory? a crashed node?); raise rollout.generate_timeout_s "
                    f"if generation is just slow, or rollout.max_restarts to retry more often"
                )
            t = time.perf_counter()
            for i, why in failed.items():
                print(f"[rlhf] rollout engine {i} {why}: restarting it and retrying the generation", flush=True)
                ray.kill(self.workers[i])
                self.workers[i] = self.restart(i, self.workers)
                self.restarts += 1
            recovery += time.perf_counter() - t
        batches = ray.get(calls)
        # the slowest engine's phases: what the step waited for
        timings = self.all("timing")
        for worker in self.workers:
            worker.generated.remote()  # not waited for: it runs while the trainer works
        self.timing = {k: max(t.get(k, 0.0) for t in timings) for k in timings[0]}
        self.timing["time/rollout_recovery"] = recovery
        for batch, idx in zip(batches, chunks):
            batch["group_ids"] = batch["group_ids"] + idx[0]
        return batches[0] if len(batches) == 1 else cat(batches, self.pad_id)

    def _failed(self, calls: list) -> dict[int, str]:
        """Engines whose call did not come back: dead (the actor's process is gone) or hung (no
        answer within `timeout_s`); their index and what happened. An error raised inside a live
        engine is no fault of the engine and propagates."""
        ready, _ = ray.wait(calls, num_returns=len(calls), timeout=self.timeout_s)
        failed = {}
        for i, call in enumerate(calls):
            if call not in ready:
                failed[i] = f"gave no answer within rollout.generate_timeout_s={self.timeout_s}"
                continue
            try:
                ray.get(call)
            except ray.exceptions.RayActorError as e:
                failed[i] = f"died ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        return failed

    def all(self, method: str, *args):
        return ray.get([getattr(w, method).remote(*args) for w in self.workers])
