"""Waiting for roles to start, out loud: a vLLM engine takes minutes on a large model or a cold
compile cache, a trainer rank may wait on a rendezvous, and a start that hangs should show where
instead of leaving the console silent."""

from __future__ import annotations

import time

import ray


def wait_for(calls: dict[str, "ray.ObjectRef"], began: float | None = None, every_s: float = 60.0) -> dict[str, object]:
    """The results of the named start-up calls (begun at `began`, a wall-clock time; default now),
    saying every `every_s` which are still running. The first call to fail raises its error at
    once, as Ray raises it."""
    pending = {ref: name for name, ref in calls.items()}
    began = time.time() if began is None else began
    deadline, results = time.time() + every_s, {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(deadline - time.time(), 0.0))
        for ref in ready:
            results[pending.pop(ref)] = ray.get(ref)
        if pending and time.time() >= deadline:
            print(f"[rlhf] {', '.join(pending.values())} still starting ({time.time() - began:.0f} s)", flush=True)
            deadline = time.time() + every_s
    return results


def wait_started(actors: dict[str, object], began: float | None = None, every_s: float = 60.0) -> None:
    """Wait until the named Ray actors' constructors have returned (`wait_for`)."""
    wait_for({name: actor.__ray_ready__.remote() for name, actor in actors.items()}, began, every_s)
