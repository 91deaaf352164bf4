"""Faults injected into the real stack (Ray, vLLM, the Automodel trainer group, the embedded model)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from rlhf.metrics import read_metrics, rl_steps

pytestmark = pytest.mark.e2e


def test_non_finite_updates_are_skipped_counted_and_stop_the_run_with_a_saved_state(tmp_path):
    """rl.lr=1e30 with an entropy bonus (a gradient even when every reward is equal): the first
    update blows the weights up to ~1e30, every later forward overflows, so every later loss is
    NaN. Those updates are skipped and counted; after 3 in a row the run stops, saving a state
    whose weights are finite."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.main", "sft.steps=0", "rl.steps=10", "rl.prompts_per_step=8", "rl.n=4",
         "rl.lr=1e30", "algo.entropy_coef=0.01", "trainer.max_consecutive_skips=3", "task.num_eval=16",
         f"trainer.output_dir={out}"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 2, proc.stderr[-4000:]
    state = out / "checkpoints" / "state-rl-step4"
    assert "trainer.max_consecutive_skips=3" in proc.stderr and f"trainer.resume={state}" in proc.stderr
    rl = list(rl_steps(read_metrics(out)).values())  # step rows (a checkpoint's time has its own row)
    assert [r["step"] for r in rl] == [1, 2, 3, 4]
    assert [r["actor/skipped_step"] for r in rl] == [0.0, 1.0, 1.0, 1.0]
    assert [r["train/skipped_updates_total"] for r in rl] == [0.0, 1.0, 2.0, 3.0]
    assert math.isfinite(rl[0]["actor/grad_norm"])
    driver = json.loads((state / "driver.json").read_text())
    assert driver["step"] == 4 and driver["controller"]["skipped_in_a_row"] == 3

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(state / "actor", tmp_path / "actor.pt")
    weights = torch.load(tmp_path / "actor.pt", weights_only=True)["model"]
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    assert max(float(w.abs().max()) for w in weights.values()) > 1e20  # the one update that went through


def _trainer_pids(marker: str) -> list[int]:
    """Ray worker processes of the run started with RLHF_FAULT_MARKER=marker that hold a trainer rank."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or b"TrainerWorker" not in (proc / "cmdline").read_bytes():
                continue
            if f"RLHF_FAULT_MARKER={marker}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_a_trainer_rank_killed_mid_run_stops_the_run_cleanly_with_its_last_state_intact(tmp_path):
    out = tmp_path / "run"
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf.main", "sft.steps=0", "rl.steps=200", "rl.prompts_per_step=8", "rl.n=4",
         "trainer.save_every=2", "task.num_eval=16", f"trainer.output_dir={out}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "RLHF_FAULT_MARKER": marker},
    )
    try:
        state = out / "checkpoints" / "state-rl-step2"
        deadline = time.time() + 800
        while not (state / "driver.json").is_file():
            assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before its first state"
            time.sleep(0.5)
        pids = _trainer_pids(marker)
        assert len(pids) == 2  # the actor's two ranks
        t = time.time()
        os.kill(pids[1], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
        stopped_in = time.time() - t
    finally:
        if proc.poll() is None:  # SIGINT: the driver's cleanup (ray.shutdown) still runs
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
    assert proc.returncode == 2, stderr[-4000:]
    assert f"pid {pids[1]}" in stderr and "trainer role 'actor' rank" in stderr
    last = max((p for p in (out / "checkpoints").glob("state-rl-step*") if (p / "driver.json").is_file()),
               key=lambda p: int(p.name.removeprefix("state-rl-step")))
    assert f"trainer.resume={last}" in stderr
    assert not _trainer_pids(marker)  # every role process is down
    print(f"stopped {stopped_in:.1f} s after the kill; last state {last.name}")
    # the last state is complete: a resumed run's start-up checks accept it
    from rlhf.config import load_config

    cfg = load_config(["sft.steps=0", "rl.steps=200", "rl.prompts_per_step=8", "rl.n=4", "trainer.save_every=2",
                       "task.num_eval=16", f"trainer.output_dir={tmp_path / 'resumed'}", f"trainer.resume={last}"])
    assert cfg.trainer.resume == str(last)
