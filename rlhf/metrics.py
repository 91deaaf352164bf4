"""Run metrics: one JSON object per line in `<output_dir>/metrics.jsonl`, plus a progress bar."""

from __future__ import annotations

import json
import math
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
        from rlhf.trackers import warn

        self.trackers.remove(tracker)
        warn(type(tracker).__name__, e)

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


def stage_bar(stage: str, total: int) -> tqdm:
    return tqdm(total=total, desc=stage, unit="step", dynamic_ncols=True, leave=True)


def fmt(metrics: dict, keys: list[str]) -> str:
    parts = []
    for k in keys:
        if k in metrics:
            v = metrics[k]
            parts.append(f"{k.split('/')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('/')[-1]}={v}")
    return " ".join(parts)
