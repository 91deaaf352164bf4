"""Scores a batch of responses in parallel worker processes, one bad sample never killing a run.

Each configured reward function runs in a pool of worker processes (started from a clean
forkserver, so the driver's threads and Ray state are not inherited). Every call has a timeout.
An exception, a timeout, a crashed worker, a non-finite or non-numeric result marks that
sample: it gets the fallback reward (or its whole group is dropped), the failure is counted by
kind, the first traceback of each kind is kept for the log, and the run goes on. A hung or dead
worker is killed and replaced. Past `max_error_rate` the run stops with a clear message.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait

class RewardErrorRateExceeded(RuntimeError):
    pass


@dataclass(frozen=True)
class RewardSpec:
    name: str  # what the registry resolves: built-in, module:function, file.py:function, entry point
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)


@dataclass
class Scored:
    rewards: list[float]  # weighted sum per sample (fallback where a function failed)
    failed: list[bool]  # a sample had at least one failed call
    named: dict[str, float]  # mean of each function's reward and extra scores over the samples that gave them
    errors: dict[str, int]  # failures of this call, by kind


def _check(value) -> tuple[str, float | None, dict[str, float]]:
    named = {}
    if isinstance(value, dict):
        named = {k: v for k, v in value.items() if k != "reward"}
        value = value.get("reward")
        if any(not isinstance(v, (int, float)) for v in named.values()):
            return "bad_type", None, {}
    if not isinstance(value, (int, float)):
        return "bad_type", None, {}
    if not math.isfinite(value) or any(not math.isfinite(v) for v in named.values()):
        return "non_finite", None, {}
    return "ok", float(value), {k: float(v) for k, v in named.items()}


def _takes_messages(fn) -> bool:
    """Whether `fn` accepts `messages` (by name or through **extra); functions written before
    multi-turn rollouts may name their keyword arguments and must not get one they do not know."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "messages" or p.kind is p.VAR_KEYWORD for p in params)


def _call(fn, kwargs: dict, idxs: list[int], items: list) -> list:
    """Results for one task: a single item, or a chunk for a batched function. A multi-turn
    sample's extras carry its whole conversation as `messages`, for functions that take it."""
    if not _takes_messages(fn):
        items = [(p, r, a, {k: v for k, v in e.items() if k != "messages"}) for p, r, a, e in items]
    try:
        if getattr(fn, "batched", False):
            prompts, responses, answers, extras = (list(col) for col in zip(*items))
            values = fn(prompts, responses, answers, extras, **kwargs)
            if not isinstance(values, (list, tuple)) or len(values) != len(items):
                return [(i, "bad_type", None, {}, "batched reward must return one value per sample") for i in idxs]
        else:
            ((prompt, response, answer, extra),) = items
            values = [fn(prompt, response, answer, **kwargs, **extra)]
    except Exception:
        tb = traceback.format_exc()
        return [(i, "exception", None, {}, tb) for i in idxs]
    return [(i, *_check(v), None) for i, v in zip(idxs, values)]


def _serve(conn, name: str, kwargs: dict) -> None:
    from rewards.registry import resolve

    fn = resolve(name)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(_call(fn, kwargs, *task))


class _Pool:
    """A fixed set of worker processes for one reward function; hung or dead ones are replaced."""

    def __init__(self, ctx, spec: RewardSpec, size: int, batched: bool):
        self.ctx, self.spec, self.size, self.batched = ctx, spec, size, batched
        self.workers = [self._start() for _ in range(size)]

    def _start(self):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_serve, args=(child, self.spec.name, self.spec.kwargs), daemon=True)
        proc.start()
        child.close()
        return [proc, parent, None, 0.0]  # process, pipe, task in flight, its start time

    def _replace(self, i: int) -> None:
        proc, conn = self.workers[i][0], self.workers[i][1]
        proc.kill()
        proc.join(5)
        conn.close()
        self.workers[i] = self._start()

    def run(self, items: list, timeout_s: float):
        """Yields (index, kind, value, named, traceback) for every item. A plain function gets
        one call per item (so a timeout costs one sample); a batched one, one chunk per worker."""
        if self.batched:
            chunks = [c for c in (list(range(len(items)))[k :: self.size] for k in range(self.size)) if c]
        else:
            chunks = [[i] for i in range(len(items))]
        todo = deque(chunks)
        pending = 0
        while todo or pending:
            for w in self.workers:
                if w[2] is None and todo:
                    idxs = todo.popleft()
                    w[1].send((idxs, [items[i] for i in idxs]))
                    w[2], w[3] = idxs, time.monotonic()
                    pending += 1
            ready = wait([w[1] for w in self.workers if w[2] is not None], timeout=0.05)
            for i, w in enumerate(self.workers):
                if w[2] is None:
                    continue
                if w[1] in ready:
                    try:
                        results = w[1].recv()
                    except (EOFError, OSError):
                        idxs, code = w[2], w[0].exitcode
                        self._replace(i)
                        pending -= 1
                        for idx in idxs:
                            yield idx, "crashed", None, {}, f"reward worker died (exit code {code})"
                        continue
                    w[2] = None
                    pending -= 1
                    yield from results
                elif time.monotonic() - w[3] > timeout_s:
                    idxs = w[2]
                    self._replace(i)
                    pending -= 1
                    for idx in idxs:
                        yield idx, "timeout", None, {}, f"reward call exceeded reward.timeout_s={timeout_s}"

    def close(self) -> None:
        for _, conn, *_ in self.workers:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc, conn, *_ in self.workers:
            proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()


class RewardManager:
    def __init__(self, specs: list[RewardSpec], *, fallback: float, timeout_s: float, num_workers: int,
                 max_error_rate: float, min_samples_for_rate: int = 64):
        self.specs = specs
        self.fallback, self.timeout_s, self.max_error_rate = fallback, timeout_s, max_error_rate
        self.min_samples_for_rate = min_samples_for_rate
        from rewards.registry import resolve

        ctx = mp.get_context("forkserver")
        self.pools = [_Pool(ctx, spec, num_workers, getattr(resolve(spec.name), "batched", False)) for spec in specs]
        self.errors: Counter = Counter()
        self.first_tracebacks: dict[str, str] = {}
        self.rated_calls = self.rated_failures = 0

    def _label(self, spec: RewardSpec) -> str:
        return spec.name.rsplit(":", 1)[-1]

    def score(self, prompts: list[str], responses: list[str], answers: list, extras: list[dict] | None = None,
              count_towards_limit: bool = True) -> Scored:
        """Scores every sample. Calls made with `count_towards_limit` (training, not evaluation)
        count towards `max_error_rate`."""
        n = len(prompts)
        extras = extras or [{}] * n
        items = list(zip(prompts, responses, answers, extras))
        totals, failed = [0.0] * n, [False] * n
        sums, counts, errors = Counter(), Counter(), Counter()
        for spec, pool in zip(self.specs, self.pools):
            label = self._label(spec)
            for idx, kind, value, named, tb in pool.run(items, self.timeout_s):
                if kind != "ok":
                    errors[kind] += 1
                    failed[idx] = True
                    if tb and kind not in self.first_tracebacks:
                        self.first_tracebacks[kind] = f"{spec.name}: {tb}"
                    continue
                totals[idx] += spec.weight * value
                if len(self.specs) > 1:
                    sums[label] += value
                    counts[label] += 1
                for k, v in named.items():
                    sums[k] += v
                    counts[k] += 1
        rewards = [self.fallback if f else t for t, f in zip(totals, failed)]
        self.errors.update(errors)
        if count_towards_limit:
            self.rated_calls += n * len(self.specs)
            self.rated_failures += sum(errors.values())
            self._check_rate()
        return Scored(rewards, failed, {f"reward/{k}": sums[k] / counts[k] for k in sums}, dict(errors))

    def _check_rate(self) -> None:
        bad, calls = self.rated_failures, self.rated_calls
        if calls >= self.min_samples_for_rate and bad / calls > self.max_error_rate:
            detail = "; ".join(f"{k}: {v}" for k, v in sorted(self.errors.items()))
            first = next(iter(self.first_tracebacks.values()), "")
            raise RewardErrorRateExceeded(
                f"{bad} of {calls} reward calls failed during training (all failures so far: {detail}), over "
                f"reward.max_error_rate={self.max_error_rate}. Fix the reward function or raise the limit. "
                f"First failure:\n{first}"
            )

    def state_dict(self) -> dict:
        return {"rated_calls": self.rated_calls, "rated_failures": self.rated_failures, "errors": dict(self.errors)}

    def load_state_dict(self, state: dict) -> None:
        self.rated_calls, self.rated_failures = state["rated_calls"], state["rated_failures"]
        self.errors = Counter(state["errors"])

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
