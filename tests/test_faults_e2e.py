"""Faults that stop a run, injected into the real stack (Ray, vLLM, the Automodel trainer group):
non-finite updates, and an engine failing beyond rollout.max_restarts. (Faults a run survives:
tests/test_faults_resume_e2e.py.)"""

import json
import math
import subprocess
import sys

import pytest
import torch
from procs import Run, kill_in_flight, role_pids

from rlhf.output import run_state
from rlhf.output.metrics import read_metrics, rl_steps

pytestmark = pytest.mark.e2e


def test_non_finite_updates_are_skipped_counted_and_stop_the_run_with_a_saved_state(tmp_path, ray_cluster):
    """rl.lr=1e30 with an entropy bonus (a gradient even when every reward is equal): the first
    update blows the weights up to ~1e30, every later forward overflows, so every later loss is
    NaN. Those updates are skipped and counted; after 3 in a row the run stops, saving a state
    whose weights are finite."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.main", "sft.steps=0", "rl.steps=10", "rl.prompts_per_step=8", "rl.n=4",
         "rl.lr=1e30", "algo.entropy_coef=0.01", "trainer.max_consecutive_skips=3", "task.num_eval=16",
         "actor.world_size=1", f"trainer.output_dir={out}", f"trainer.ray_address={ray_cluster}"],
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


def test_an_engine_failing_beyond_max_restarts_stops_the_run_with_the_state_before_the_step(tmp_path):
    """rollout.max_restarts=0: the engine SIGKILLed after RL step 1 stops the run, saving the state
    the next run must start from. Its death lands in step 2's generation (the state after step 1,
    with the data position and seeds from before step 2) unless that generation was done before
    the test saw step 1's row (a loaded machine): then in step 2's push, after its update (the state
    after step 2, whose metrics row is not written). Either way the state is the last one trained."""
    out = tmp_path / "run"
    run = Run(out, tmp_path / "run", "sft.steps=0", "rl.steps=4", "trainer.save_every=0", "rollout.max_restarts=0",
              "actor.world_size=1")
    try:
        run.wait_for(lambda: role_pids(run.marker, "RolloutWorker"), "the rollout engine")
        engine = role_pids(run.marker, "RolloutWorker")
        assert len(engine) == 1
        run.wait_for(lambda: run.rows("rl"), "RL step 1")
        kill_in_flight(engine[0])
        assert run.finish() == 2, run.stderr[-4000:]
    finally:
        run.end()
    assert "rollout engine(s) 0 (died" in run.stderr and "rollout.max_restarts=0" in run.stderr
    in_push = "RL step 2 trained, but its weights could not reach the rollout engines" in run.stderr
    step = 2 if in_push else 1
    state = out / "checkpoints" / f"state-rl-step{step}"
    said = f"The state after it is saved in {state}" if in_push else f"The state after RL step 1 is saved in {state}"
    assert said in run.stderr and "trainer.resume=auto" in run.stderr, run.stderr[-4000:]
    assert run_state.problem(state) is None
    driver = json.loads((state / "driver.json").read_text())
    # one generation round and 8 prompts drawn per step trained, none for a step not begun
    assert driver["step"] == step and driver["controller"]["draws"] == step
    assert driver["sampler"] == {"epoch": 0, "pos": 8 * step}
    assert sorted(run.rows("rl")) == [1]
