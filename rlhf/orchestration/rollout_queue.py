"""Batches generated ahead of training (`rl.off_policy_steps` = k).

Step t trains on batch t. With k = 0 it is generated when the step asks for it (on-policy). With
k >= 1, batches t+1..t+k are generating or ready while step t trains: the first step launches k
batches after its own, and every push launches one more, on the weights just pushed. So batch b
is generated on the weights of step max(0, b-1-k) at the oldest: a bounded staleness, by
construction (a group older than that cannot arise, so none is ever dropped).

A push waits, with `rl.partial_rollouts=false`, for the batches in flight (they finish on the
weights they started with; each batch is then one policy version). With partial rollouts it does
not wait: the engines load the new weights between two of their steps and the requests in flight
continue on them, every token recording the version that sampled it. Multi-turn batches
(`agent.env`) do not wait either: their trajectories spend most of their time in tools, and a push
lands between two turns (the engines let the turns being sampled finish first, unless partial
rollouts let it land inside them), so a trajectory's turns may be sampled by successive versions.

Launches happen on the driver's thread in step order, drawing their prompts there, so which prompts
and seeds a batch gets never depends on timing; generation and scoring run on a thread of their own
per batch. A saved state holds the ready batches, and for each batch still in flight its launch
mark (the data position and draw count before it, and its version): a resumed run launches it
again, on the same weights, drawing the same prompts with the same seeds. Where generation draws
prompts as it goes (dynamic sampling refills) or crosses pushes (partial rollouts, multi-turn), the
save waits for the batches in flight instead and keeps them as ready.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from tensordict import TensorDict


@dataclass
class Rollouts:
    """One step's generated and scored samples, what making them took, and the policy version
    (weight pushes after an update, `Controller.version`) they were launched on."""

    batch: TensorDict
    named: dict[str, float]
    errors: dict[str, int]
    rounds: int
    timing: dict[str, float]
    version: int

    def state_dict(self) -> dict:
        """Tensors, numbers and strings only: `torch.load(weights_only=True)` reads it back."""
        return {"batch": self.batch.to_dict(), "size": self.batch.batch_size[0], "named": self.named,
                "errors": self.errors, "rounds": self.rounds, "timing": self.timing, "version": self.version}

    @classmethod
    def from_state_dict(cls, d: dict) -> "Rollouts":
        return cls(TensorDict(d["batch"], batch_size=[d["size"]]), d["named"], d["errors"], d["rounds"], d["timing"],
                   d["version"])


def in_background(fn, *args) -> Future:
    """`fn(*args)` on a daemon thread: a generation blocked in `ray.get` must not hold up the
    interpreter's exit after a failure elsewhere (a ThreadPoolExecutor's threads are joined at exit)."""
    future = Future()

    def run():
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # handed to whoever takes the result
            future.set_exception(e)

    threading.Thread(target=run, name="rollout-ahead", daemon=True).start()
    return future


@dataclass
class _Entry:
    future: Future  # of Rollouts
    version: int
    mark: dict | None  # the data position before the launch's draw (None: generated on the step's own thread)


class RolloutQueue:
    def __init__(self, ahead: int, crossing: bool, draw: Callable[[], object], generate: Callable[[object, int, bool], Rollouts],
                 position: Callable[[], dict], restore: Callable[[dict], None], relaunchable: bool):
        """`crossing`: a batch may be generated across pushes (partial rollouts, multi-turn), so a
        push does not wait for it; `draw()`: the next batch's prompts and seeds (driver thread); `generate(drawn, version,
        restart)`: generate and score them; `position()` / `restore(p)`: the data position (sampler
        and draw count) to save and set; `relaunchable`: generation draws nothing itself (no
        dynamic sampling), so a batch in flight can be launched again from its mark."""
        self.ahead, self.crossing = ahead, crossing
        self._draw, self._generate = draw, generate
        self._position, self._restore = position, restore
        self.relaunchable = relaunchable and not crossing
        self._queue: deque[_Entry] = deque()

    def take(self, version: int, more: int) -> tuple[Rollouts, float]:
        """This step's batch: the oldest launched, or generated now (nothing launched: on-policy,
        the first step, after a resume of an empty queue); then, while fewer than `ahead` are
        launched, more on `version`, at most `more` (the steps left after this one). Returns it
        and the seconds the step waited for it."""
        import time

        if self._queue:
            entry = self._queue.popleft()
            t = time.perf_counter()
            got = entry.future.result()  # raises what its generation raised
            waited = time.perf_counter() - t
        else:
            got, waited = self._generate(self._draw(), version, True), 0.0
        while len(self._queue) < min(self.ahead, more):
            self.launch(version)
        return got, waited

    def launch(self, version: int) -> None:
        """One more batch, its prompts drawn now, generated on a thread of its own on `version`."""
        mark = self._position() if self.relaunchable else None
        drawn = self._draw()
        self._queue.append(_Entry(in_background(self._generate, drawn, version, False), version, mark))

    def after_push(self, version: int, more: int) -> None:
        """The batch for the step `ahead` steps on, on the weights just pushed (`version`), if that
        step exists (`more`: the steps left after the current one)."""
        if self.ahead and len(self._queue) < min(self.ahead + 1, more):
            self.launch(version)

    def before_push(self) -> float:
        """Unless batches may cross pushes, wait for every batch in flight (each batch is then one
        policy version); seconds waited. A batch whose generation failed is left for `take` to raise."""
        import time

        t = time.perf_counter()
        if not self.crossing:
            for entry in self._queue:
                entry.future.exception()  # waits; the failure stays in the future
        return time.perf_counter() - t

    def failed(self) -> bool:
        """Whether a finished batch's generation failed (the push is then skipped: see Controller.rl_step)."""
        return any(e.future.done() and e.future.exception() is not None for e in self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def depth(self) -> tuple[int, int]:
        """(ready, in flight) batches."""
        ready = sum(e.future.done() for e in self._queue)
        return ready, len(self._queue) - ready

    def entries(self) -> list[_Entry]:
        """The launched batches as they stand now (for `state_dict` later)."""
        return list(self._queue)

    def state_dict(self, entries: list[_Entry] | None = None) -> list[dict]:
        """Every launched batch (or those of `entries`): ready ones as `Rollouts.state_dict`
        ({"ready": ...}), ones in flight as their launch mark ({"mark": ..., "version": ...}); see
        the module docstring. A batch whose generation failed is left out, with every later one (a
        resumed run draws new prompts)."""
        out = []
        for entry in self._queue if entries is None else entries:
            if entry.mark is not None and not entry.future.done():
                out.append({"mark": copy.deepcopy(entry.mark), "version": entry.version})
                continue
            if entry.future.exception() is not None:
                break
            out.append({"ready": entry.future.result().state_dict()})
        return out

    def load_state_dict(self, state: list[dict]) -> None:
        """The batches of a saved state: ready ones as they were, the rest launched again from
        their marks (the data position restored afterwards)."""
        self._queue.clear()
        now = self._position()
        for item in state:
            if "ready" in item:
                future = Future()
                future.set_result(Rollouts.from_state_dict(item["ready"]))
                self._queue.append(_Entry(future, item["ready"]["version"], None))
            else:
                self._restore(item["mark"])
                self.launch(item["version"])
        self._restore(now)
