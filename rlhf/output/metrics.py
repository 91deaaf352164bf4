"""Run metrics: one JSON object per line in `<output_dir>/metrics.jsonl`; the console's progress
of each stage and the start-up's phases."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm


class MetricsLog:
    """Writes each row to metrics.jsonl (the source of truth), then hands it to the trackers."""

    def __init__(self, output_dir: str, trackers: list | None = None):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", buffering=1)
        self.trackers = list(trackers or [])

    def log(self, stage: str, step: int, metrics: dict) -> None:
        row = {"stage": stage, "step": step, "time": round(time.time(), 3)}
        row.update({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        for tracker in list(self.trackers):
            try:
                tracker.log(stage, step, metrics)
            except Exception as e:  # a tracker's trouble must not stop training
                self._drop(tracker, e)

    def _drop(self, tracker, e: Exception) -> None:
        self.trackers.remove(tracker)
        print(f"[rlhf] warning: tracker {type(tracker).__name__} failed ({type(e).__name__}: {e}); it is dropped, "
              f"metrics.jsonl goes on", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._file.close()
        for tracker in list(self.trackers):
            try:
                tracker.close()
            except Exception as e:
                self._drop(tracker, e)


def read_metrics(output_dir) -> list[dict]:
    """The rows a run wrote to `<output_dir>/metrics.jsonl`, in order."""
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def rl_steps(rows: list[dict], stage: str = "rl") -> dict[int, dict]:
    """RL stage `stage`'s step rows (those with rollout metrics; evaluation-only and checkpoint rows
    left out), by step."""
    return {r["step"]: r for r in rows if r["stage"] == stage and "reward/mean" in r}


class PlainProgress:
    """A stage's progress as plain lines, for a console that is not a terminal (a log file, a pipe),
    where a bar's redraws pile up: a line at every tenth of the stage or after `every_s` seconds
    without one, whichever comes first, and one at the end. Called like tqdm's bar."""

    def __init__(self, stage: str, total: int, initial: int = 0, every_s: float = 30.0, out=None):
        self.stage, self.total, self.every_s, self.out = stage, total, every_s, out
        self.n = self.initial = initial
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.tenth = self.n * 10 // max(total, 1)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        """Called after each step's update: the step's numbers, and the time to print a line."""
        self.postfix = text
        now = time.monotonic()
        tenth = self.n * 10 // max(self.total, 1)
        if self.n < self.total and (tenth > self.tenth or now - self.last >= self.every_s):
            self.tenth = tenth
            self._line(now)

    def write(self, text: str) -> None:
        print(text, file=self.out or sys.stdout, flush=True)

    def close(self) -> None:
        if self.n > self.initial:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        self.last = now
        rate = (self.n - self.initial) / max(now - self.start, 1e-9)
        speed = f"{rate:.2f} step/s" if rate >= 1 else f"{1 / rate:.2f} s/step"
        self.write(f"[{self.stage}] step {self.n}/{self.total} ({100 * self.n // max(self.total, 1)}%), {speed}"
                   + (f", {self.postfix}" if self.postfix else ""))


def stage_bar(stage: str, total: int, initial: int = 0):
    """A progress bar on a terminal (tqdm draws on stderr); plain lines now and then anywhere else."""
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=stage, unit="step", dynamic_ncols=True, leave=True)
    return PlainProgress(stage, total, initial)


class StartUp:
    """The start-up's phases, a console line each as it ends, with its seconds (and, for the work
    the driver does itself, the CPU seconds it used: well under the wall time when other
    processes held the cores)."""

    def __init__(self, start: float):
        self.start = self.last = start
        self.cpu = 0.0  # the driver's CPU seconds at the last line (time.process_time)

    def done(self, phase: str, detail: str = "", own: bool = False) -> None:
        now, cpu = time.time(), time.process_time()
        notes = ([detail] if detail else []) + ([f"{cpu - self.cpu:.1f} s of CPU"] if own else [])
        print(f"[rlhf] start-up: {phase} {now - self.last:.1f} s" + (f" ({'; '.join(notes)})" if notes else ""),
              flush=True)
        self.last, self.cpu = now, cpu

    def total(self) -> float:
        return time.time() - self.start


def fmt(metrics: dict, keys: list[str]) -> str:
    parts = []
    for k in keys:
        if k in metrics:
            v = metrics[k]
            parts.append(f"{k.split('/')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('/')[-1]}={v}")
    return " ".join(parts)
