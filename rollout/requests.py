"""vLLM driven request by request: many requests in flight, each finishing at its own pace, with
continuous batching across them (every engine step serves all running requests).

vLLM's `AsyncLLM` always runs its engine core in a process of its own: on CPU that start takes
~17 s instead of ~2 s, leaves a /dev/shm segment behind, and turns tensors nested in RPC arguments
into lists, which the weight transports rely on. So the in-process engine of the `LLM` the
transports already talk to is stepped here by one thread, and requests come from any thread
(futures) or coroutine (`await`). Whatever else touches the engine (a weight push, sleep or wake,
a cache reset) runs inside `paused()`: no step runs meanwhile, and requests stay in flight.
`drain()` instead lets the requests in flight finish first while new ones queue behind it: a push
then lands between requests (between the turns of a multi-turn trajectory), never inside one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from concurrent.futures import Future


class RequestDriver:
    def __init__(self, llm):
        from vllm.sampling_params import RequestOutputKind

        self.engine = llm.llm_engine
        self._final = RequestOutputKind.FINAL_ONLY
        renderer = getattr(self.engine, "renderer", None)
        self._render = getattr(renderer, "render_cmpl", None)
        self._cv = threading.Condition()
        self._futures: dict[str, Future] = {}
        self._ids = itertools.count()
        self._pauses = 0  # paused() holders, present and waiting
        self._gates = 0  # drain() holders: new requests queue in _queued until the last releases
        self._queued: list[tuple[Future, list[int], object]] = []
        self._stepping = False
        self._closed = False
        self.busy_s = 0.0  # time inside engine steps so far: the engine's busy share is busy_s / wall time
        self.pushes = 0  # weight pushes that landed so far (`note_push`)
        self.added = 0  # requests that entered the engine so far (each may leave prefixes in its cache)
        self._started: dict[str, int] = {}  # request id -> pushes when it was submitted
        self._crossings: dict[tuple[str, int], list[int]] = {}  # (request id, sample) -> its tokens at each push
        self._thread = threading.Thread(target=self._run, name="vllm-steps", daemon=True)
        self._thread.start()

    def _prompt(self, prompt_ids: list[int]):
        prompt = {"prompt_token_ids": list(prompt_ids)}
        return self._render([prompt])[0] if self._render is not None else prompt

    def submit(self, prompt_ids: list[int], params) -> Future:
        """A request (n samples of `params`); its future gets vLLM's final `RequestOutput`. While
        a drain holds the engine, the request waits in a queue and enters when the drain ends."""
        params.output_kind = self._final
        future: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the rollout engine is shut down")
            if self._gates:
                self._queued.append((future, list(prompt_ids), params))
            else:
                self._add(future, prompt_ids, params)
        return future

    def _add(self, future: Future, prompt_ids: list[int], params) -> None:
        """Into the engine (holding `_cv`)."""
        rid = f"q{next(self._ids)}"  # apart from LLM.generate's numbering
        self._futures[rid] = future
        self._started[rid] = self.pushes
        self.added += 1
        try:
            self.engine.add_request(rid, self._prompt(prompt_ids), params)
        except BaseException:
            del self._futures[rid]
            del self._started[rid]
            raise
        self._cv.notify_all()

    async def generate(self, prompt_ids: list[int], params):
        return await asyncio.wrap_future(self.submit(prompt_ids, params))

    def run(self, requests: list[tuple[list[int], object]]) -> list:
        """Submit every (prompt ids, params) and wait for all; outputs in the same order."""
        # All enter before the next step: which requests share a step never depends on thread
        # timing (vLLM's CPU kernels give batch-dependent rounding, enough to flip a sample of a
        # near-uniform distribution).
        with self._cv:
            while self._gates and not self._closed:  # a drain under way: enter after it
                self._cv.wait()
        self.hold()
        try:
            futures = [self.submit(ids, params) for ids, params in requests]
        finally:
            self.release()
        return [f.result() for f in futures]

    def hold(self) -> None:
        """Stop stepping (after the step under way) until `release`: requests stay in flight."""
        with self._cv:
            self._pauses += 1
            while self._stepping:
                self._cv.wait()

    def release(self) -> None:
        with self._cv:
            self._pauses -= 1
            self._cv.notify_all()

    def drain(self) -> None:
        """Let the requests in flight finish while new ones queue, then stop stepping until
        `undrain`: what runs in between (a push) lands between requests, never inside one."""
        with self._cv:
            self._gates += 1
            while self._futures and not self._closed:
                self._cv.wait()
        self.hold()

    def undrain(self) -> None:
        """End a `drain`: stepping resumes, and the queued requests enter (on the weights now loaded)."""
        failed = []
        with self._cv:
            self._gates -= 1
            if not self._gates:
                for future, ids, params in self._queued:
                    try:
                        if self._closed:
                            raise RuntimeError("the rollout engine shut down with this request queued")
                        self._add(future, ids, params)
                    except BaseException as e:
                        failed.append((future, e))
                self._queued = []
        self.release()
        for future, e in failed:
            future.set_exception(e)

    @contextlib.contextmanager
    def paused(self):
        """No engine step runs inside; requests in flight wait and continue afterwards."""
        self.hold()
        try:
            yield
        finally:
            self.release()

    @property
    def in_flight(self) -> int:
        return len(self._futures)

    @property
    def draining(self) -> bool:
        """A drain is under way or holds the engine: new requests queue."""
        return bool(self._gates)

    def note_push(self) -> None:
        """New weights have landed (call it inside `paused()`): every sample in flight records how
        many tokens it had, so each token's policy is known (`push_index`)."""
        with self._cv:  # no request is submitted meanwhile: each is either counted here or starts after
            self.pushes += 1
            states = getattr(getattr(self.engine, "output_processor", None), "request_states", {})
            for state in list(states.values()):
                parent = getattr(state, "parent_req", None)
                rid = parent.external_req_id if parent is not None else state.external_req_id
                if rid in self._futures:
                    key = (rid, getattr(state, "request_index", 0) or 0)
                    self._crossings.setdefault(key, []).append(state.detokenizer.num_output_tokens())

    def push_index(self, out, sample: int) -> list[int]:
        """For each token of sample `sample` of a finished output: the number of pushes that had
        landed when it was sampled (counted since the engine started)."""
        start = self._started.get(out.request_id, self.pushes)
        crossings = self._crossings.get((out.request_id, sample), [])
        return [start + sum(i >= c for c in crossings) for i in range(len(out.outputs[sample].token_ids))]

    def forget(self, out) -> None:
        """Drop a finished output's push records (after `push_index`)."""
        self._started.pop(out.request_id, None)
        for j in range(len(out.outputs)):
            self._crossings.pop((out.request_id, j), None)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (self._pauses or not self._futures):
                    self._cv.wait()
                if self._closed:
                    return
                self._stepping = True
            t = time.perf_counter()
            try:
                outputs = self.engine.step()
            except BaseException as e:  # the engine is broken: every waiter learns why
                with self._cv:
                    self._stepping, self._closed = False, True
                    failed, self._futures = list(self._futures.values()), {}
                    failed += [f for f, _, _ in self._queued]
                    self._queued = []
                    self._cv.notify_all()
                for future in failed:
                    future.set_exception(e)
                return
            self.busy_s += time.perf_counter() - t
            done = []
            with self._cv:
                self._stepping = False
                for out in outputs:
                    future = self._futures.pop(out.request_id, None) if out.finished else None
                    if future is not None:
                        done.append((future, out))
                self._cv.notify_all()
            for future, out in done:
                future.set_result(out)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            pending, self._futures = self._futures, {}
            queued, self._queued = self._queued, []
            self._cv.notify_all()
        if pending:
            with contextlib.suppress(Exception):
                self.engine.abort_request(list(pending))
        for future in [*pending.values(), *(f for f, _, _ in queued)]:
            future.set_exception(RuntimeError("the rollout engine shut down with this request in flight"))
        self._thread.join(10)
