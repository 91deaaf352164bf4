"""Several rollout engines (data parallel) addressed as one: prompts are spread over the engines
in contiguous chunks and the samples come back in prompt order.

An engine that dies, wherever the driver finds it dead (a generation call, a weight push, a
sleep or wake, reading its timings), or that hangs in a call the group makes, is replaced here
and nowhere else: the group kills it and asks `restart` for fresh engines in the same places,
connected to the weight transport and given the trainer's current weights. A generation is then
retried with the same seeds, so the step's samples are those the lost engine would have drawn.
More than `max_restarts` failures of one call in a row raise `RolloutFailed`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import ray
import torch
from tensordict import TensorDict

from core.batch import cat
from rollout.base import Sampling, Trajectories
from rollout.trajectory import COUNTS


class RolloutFailed(RuntimeError):
    """Rollout engines kept failing after `rollout.max_restarts` restarts in a row. `after_update`:
    raised by a weight push after the trainer's update, so the trainer is a step further than
    the engines."""

    after_update = False


class EngineLost(RuntimeError):
    """An engine failed while others were being replaced: the replacement starts over."""

    def __init__(self, failed: dict[int, str]):
        super().__init__(", ".join(f"rollout engine {i} {why}" for i, why in failed.items()))
        self.failed = failed


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class RolloutGroup:
    def __init__(self, workers: list, pad_id: int, restart: Callable[[list[int], list], None] | None = None,
                 timeout_s: float | None = None, max_restarts: int = 0):
        """`restart(failed, workers)`: put fresh engines in the places `failed` of `workers` (the
        group's list, updated in place), connected and given the trainer's current weights (a push
        to every engine). `timeout_s`: how long one call may take before its engine counts as
        hung (None: no limit)."""
        self.workers, self.pad_id = workers, pad_id
        self.restart, self.timeout_s, self.max_restarts = restart, timeout_s, max_restarts
        self.timing: dict[str, float] = {}
        self.restarts = 0  # engines replaced since the run started
        self._recovering = False

    def generate(self, prompt_ids: list[list[int]], sampling: Sampling, restart: bool = True) -> TensorDict:
        """`sampling.n` samples per prompt from the engines. `restart=False` for a generation
        running beside the trainer (rl.off_policy_steps >= 1): a replacement would get the
        trainer's weights mid-update, newer than the samples' claimed policy, so a failed engine is
        killed and `RolloutFailed` raised at once; the next call with restarts replaces it."""
        return cat(self._spread("generate", prompt_ids, sampling, restart), self.pad_id)

    def trajectories(self, rows: list[dict], sampling: Sampling, agent, restart: bool = True) -> Trajectories:
        """`sampling.n` multi-turn trajectories per row (see `RolloutEngine.trajectories`), spread
        and recovered like `generate`."""
        parts = self._spread("trajectories", rows, sampling, restart, agent)
        sizes = [p.batch.batch_size[0] for p in parts]
        stats = {k: sum(p.stats.get(k, 0.0) * (1 if k in COUNTS else n) for p, n in zip(parts, sizes))
                 / (1 if k in COUNTS else max(sum(sizes), 1)) for k in set().union(*(p.stats for p in parts))}
        seconds = self.timing.get("time/vllm_generate", 0.0)
        stats["agent/trajectories_per_s"] = sum(sizes) / max(seconds, 1e-9)  # over the slowest engine's time
        return Trajectories(cat([p.batch for p in parts], self.pad_id), [m for p in parts for m in p.messages], stats)

    def _spread(self, method: str, items: list, sampling: Sampling, restart: bool, *args) -> list:
        """`method(chunk, sampling, *args)` on every engine, the items spread over them in
        contiguous chunks; each engine's result with its `group_ids` made global. A dead or hung
        engine is replaced and its call retried with the same seeds."""
        chunks = [c.tolist() for c in torch.arange(len(items)).tensor_split(len(self.workers)) if len(c)]
        recovery = 0.0
        for failures in range(self.max_restarts + 1):
            calls = {}
            for i, idx in enumerate(chunks):
                # Item i's seed is the round's seed + i wherever it runs: the samples do not depend
                # on how many engines there are.
                part = dataclasses.replace(sampling, seed=None if sampling.seed is None else sampling.seed + idx[0])
                calls[i] = getattr(self.workers[i], method).remote([items[p] for p in idx], part, *args)
            failed = self._failed(calls)
            if not failed:
                break
            if not restart:
                self._give_up_beside_the_trainer(failed)
            if failures == self.max_restarts or self.restart is None:
                raise RolloutFailed(self._gave_up(failed, failures + 1, "while generating"))
            recovery += self.recover(failed, "while generating (the generation is retried with the same seeds)")
        results = ray.get([calls[i] for i in range(len(chunks))])
        # the slowest engine's phases: what the step waited for (an engine replaced since has none)
        timings = self.all("timing", restart=restart)
        for worker in self.workers:
            worker.generated.remote()  # not waited for: it runs while the trainer works
        self.timing = {k: max(t.get(k, 0.0) for t in timings) for k in set().union(*timings)}
        self.timing["time/rollout_recovery"] = recovery
        for result, idx in zip(results, chunks):
            batch = result.batch if isinstance(result, Trajectories) else result
            batch["group_ids"] = batch["group_ids"] + idx[0]
        return results

    def all(self, method: str, *args, restart: bool = True) -> list:
        """`method(*args)` on every engine, the results in engine order. An engine that dies or hangs
        in it is replaced and the fresh one called instead (`restart=False`: beside the trainer, see
        `generate`); while engines are being replaced, a failure raises `EngineLost` for the
        replacement to start over."""
        results, todo, failures = {}, range(len(self.workers)), 0
        while True:
            calls = {i: getattr(self.workers[i], method).remote(*args) for i in todo}
            failed = self._failed(calls)
            results.update({i: ray.get(call) for i, call in calls.items() if i not in failed})
            if not failed:
                return [results[i] for i in range(len(self.workers))]
            if self._recovering:
                raise EngineLost(failed)
            if not restart:
                self._give_up_beside_the_trainer(failed)
            failures += 1
            if failures > self.max_restarts or self.restart is None:
                raise RolloutFailed(self._gave_up(failed, failures, f"in its {method} call"))
            self.recover(failed, f"in its {method} call")
            todo = sorted(failed)

    def recover(self, failed: dict[int, str], where: str) -> float:
        """Replace the `failed` engines ({index: what happened}) with fresh ones holding the
        trainer's current weights; an engine that dies while that happens (e.g. during the push)
        is replaced as well. Returns the seconds it took."""
        t, attempt = time.perf_counter(), 0
        while True:
            attempt += 1
            if attempt > self.max_restarts or self.restart is None:
                raise RolloutFailed(self._gave_up(failed, attempt, where))
            for i, why in failed.items():
                print(f"[rlhf] rollout engine {i} {why} {where}; replacing it", flush=True)
                ray.kill(self.workers[i])
            self.restarts += len(failed)
            self._recovering = True
            try:
                self.restart(sorted(failed), self.workers)
                took = time.perf_counter() - t
                print(f"[rlhf] rollout engine(s) {', '.join(map(str, sorted(failed)))} replaced in {took:.1f}s",
                      flush=True)
                return took
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, EngineLost) as e:
                failed = {**self.dead(), **(e.failed if isinstance(e, EngineLost) else {})}
                if not failed:  # not an engine's death (a trainer's, or an error): not ours to handle
                    raise
            finally:
                self._recovering = False

    def dead(self) -> dict[int, str]:
        """The engines whose process is gone (an engine busy with a call counts as alive)."""
        out = {}
        for i, worker in enumerate(self.workers):
            try:
                ray.get(worker.__ray_ready__.remote(), timeout=10)
            except ray.exceptions.RayActorError as e:
                out[i] = f"died ({_first_line(e)})"
            except ray.exceptions.GetTimeoutError:
                continue
        return out

    def _give_up_beside_the_trainer(self, failed: dict[int, str]) -> None:
        for i in failed:
            ray.kill(self.workers[i])
        raise RolloutFailed(
            f"rollout engine(s) {', '.join(f'{i} ({why})' for i, why in failed.items())} failed while "
            f"generating a later step's samples beside the trainer (rl.off_policy_steps >= 1), where engines "
            f"are not replaced. Check the engines' log above (out of memory? a crashed node?)"
        )

    def _gave_up(self, failed: dict[int, str], times: int, where: str) -> str:
        return (f"rollout engine(s) {', '.join(f'{i} ({why})' for i, why in failed.items())} failed {where}, "
                f"{times} time(s) in a row (rollout.max_restarts={self.max_restarts} restarts allowed). Check the "
                f"engines' log above (out of memory? a crashed node?); raise rollout.generate_timeout_s if generation "
                f"is just slow, or rollout.max_restarts to retry more often")

    def _failed(self, calls: dict[int, "ray.ObjectRef"]) -> dict[int, str]:
        """Engines (by index) whose call did not come back: dead (the actor's process is gone) or
        hung (no answer within `timeout_s`), and what happened. An error raised inside a live
        engine is no fault of the engine and propagates."""
        if not calls:
            return {}
        ready, _ = ray.wait(list(calls.values()), num_returns=len(calls), timeout=self.timeout_s)
        failed = {}
        for i, call in calls.items():
            if call not in ready:
                failed[i] = f"gave no answer within rollout.generate_timeout_s={self.timeout_s}"
                continue
            try:
                ray.get(call)
            except ray.exceptions.RayActorError as e:
                failed[i] = f"died ({_first_line(e)})"
        return failed
