"""Tool calls in worker processes: a call that raises, hangs, crashes its worker, returns something
other than a string, or returns too much becomes an error text for the model and an error kind
for the metrics, and the trajectory goes on.

Workers are started on demand (from a clean forkserver, up to `max_workers`) and kept; each
resolves the environment once and calls its tools (static methods) by name. A hung call's worker
is killed and not reused. Calls come from many threads at once (one per trajectory waiting on
its tools), each holding one worker for the length of its call.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import traceback


_START_S = 120  # a worker's start (a fresh interpreter importing the environment's module)


def _result(fn, arguments: dict, max_chars: int) -> tuple[str, str | None]:
    try:
        value = fn(**arguments)
    except TypeError as e:
        return f"error: bad arguments: {e}", "bad_arguments"
    except Exception as e:  # the tool's own failure: the model reads it
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        return f"error: {last}", "exception"
    if not isinstance(value, str):
        return f"error: the tool returned {type(value).__name__}, not a string", "bad_type"
    if len(value) > max_chars:
        return value[:max_chars] + f"\n[... {len(value) - max_chars} more characters cut]", "truncated"
    return value, None


def _serve(conn, env: str, max_chars: int) -> None:
    from agents.registry import resolve_env

    cls = resolve_env(env)
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        name, arguments = task
        conn.send(_result(getattr(cls, name), arguments, max_chars))


class ToolRunner:
    def __init__(self, env: str, max_workers: int, timeout_s: float, max_output_chars: int):
        """`env`: the environment's name as configured (`agent.env`), resolved in each worker."""
        self.env, self.max_workers, self.timeout_s, self.max_chars = env, max_workers, timeout_s, max_output_chars
        self._ctx = mp.get_context("forkserver")
        self._idle: list = []
        self._cv = threading.Condition()
        self._started = 0  # workers alive (idle or busy)
        self._all: list = []

    def _start(self):
        """A new worker, once it has loaded the environment: the start is not part of a call's time."""
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, self.env, self.max_chars), daemon=True, name="tool-worker")
        proc.start()
        child.close()
        self._all.append((proc, parent))
        if not parent.poll(_START_S) or parent.recv() != "ready":
            proc.kill()
            raise RuntimeError(f"a tool worker for {self.env} did not start within {_START_S} s")
        return proc, parent

    def _take(self):
        """An idle worker, a new one while fewer than `max_workers` live, or the next to come free."""
        with self._cv:
            while not self._idle and self._started >= self.max_workers:
                self._cv.wait()
            if self._idle:
                return self._idle.pop()
            self._started += 1
        try:
            return self._start()
        except BaseException:
            with self._cv:
                self._started -= 1
                self._cv.notify()
            raise

    def _give_back(self, worker) -> None:
        with self._cv:
            self._idle.append(worker)
            self._cv.notify()

    def _drop(self, worker) -> None:
        proc, conn = worker
        proc.kill()
        proc.join(5)
        conn.close()
        with self._cv:
            self._started -= 1
            self._cv.notify()

    def call(self, name: str, arguments: dict) -> tuple[str, str | None]:
        """The tool's text, and None or the kind of failure (timeout, crashed, exception,
        bad_type, bad_arguments, truncated: the text then says what happened)."""
        worker = self._take()
        proc, conn = worker
        try:
            conn.send((name, arguments))
            if not conn.poll(self.timeout_s):
                self._drop(worker)
                return f"error: the tool {name} did not finish within {self.timeout_s:g} s", "timeout"
            text, error = conn.recv()
        except (EOFError, OSError):
            code = proc.exitcode
            self._drop(worker)
            return f"error: the tool {name} crashed (exit code {code})", "crashed"
        self._give_back(worker)
        return text, error

    def close(self) -> None:
        for proc, conn in self._all:
            try:
                conn.send(None)
            except OSError:
                pass
        for proc, conn in self._all:
            proc.join(1)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self._all = []
