"""Graceful stop: SIGINT or SIGTERM asks the driver to stop at the next step boundary.

The RL loop then saves a resumable state, the pipeline's `finally` shuts the reward pools and
Ray down, and `python -m rlhf.main` exits with 128 + the signal's number. A second signal stops
at once (KeyboardInterrupt, with the same clean-up).
"""

from __future__ import annotations

import signal
import sys
import threading


class Stopped(RuntimeError):
    """The run stopped on a signal, at a step boundary."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignal:
    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        self.signum = signum
        print(f"\n[rlhf] {signal.Signals(signum).name} received: stopping at the end of this step (RL saves a "
              f"resumable state); send it again to stop at once", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stop(self, where: str) -> None:
        """Raise `Stopped` if a stop was asked for; `where` says what was kept."""
        if self.signum is not None:
            raise Stopped(f"stopped by {signal.Signals(self.signum).name} {where}", self.signum)
