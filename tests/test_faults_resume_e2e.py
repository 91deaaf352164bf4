"""Faults a run survives, injected into the real stack (Ray, vLLM, the Automodel trainer group,
the embedded model), against the uninterrupted run of the same config. (Faults that stop a run:
tests/test_faults_e2e.py.)"""

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from procs import Run, kill_in_flight, role_pids
from safetensors.torch import load_file

from rlhf.output import run_state
from rlhf.output.metrics import read_metrics

pytestmark = pytest.mark.e2e

# what a run computes; times and the restart count are how it went
_HOW = ("time", "throughput/", "weight_sync/", "rollout/restarts_total")


def _same(a: dict, b: dict, where: str) -> None:
    keys = {k for k in a if not k.startswith(_HOW)}
    assert keys == {k for k in b if not k.startswith(_HOW)}, where
    for k in sorted(keys):
        assert a[k] == b[k], (where, k, a[k], b[k])


def _complete(out: Path, stage: str, step: int):
    return lambda: (out / "checkpoints" / f"state-{stage}-step{step}" / "COMPLETE").is_file()


@pytest.mark.timeout(1800)  # five runs of the job, four of them one after another
def test_a_run_survives_driver_trainer_and_rollout_faults_and_reproduces_the_uninterrupted_run(tmp_path):
    """One job, four faults, against the uninterrupted run of the same config (run alongside):
    1. the driver SIGKILLed during SFT, resumed with trainer.resume=auto (mid-SFT);
    2. the vLLM engine SIGKILLed during the weight push that ends SFT (outside any generation):
       replaced, given the trainer's weights, and the run goes on;
    3. a trainer rank SIGKILLed during RL: the run stops cleanly; resumed with resume=auto;
    4. the engine hung (SIGSTOP) in a generation: killed after rollout.generate_timeout_s,
       replaced, the generation retried with the same seeds.
    Every later SFT and RL row equals the uninterrupted run's to the bit (losses, rewards, grad
    norms, the rollout-vs-trainer gap), and the final weights are the same. (An engine SIGKILLed
    with a generation call in flight: tests/test_faults_e2e.py and tests/test_rollout_recovery.py.)"""
    out = tmp_path / "run"
    runs = [Run(tmp_path / "full", tmp_path / "full")]
    full = runs[0]
    try:
        # 1. the driver killed after SFT step 2's state is complete (SFT runs to step 6)
        first = Run(out, tmp_path / "first")
        runs.append(first)
        first.wait_for(_complete(out, "sft", 2), "the state of SFT step 2")
        first.proc.kill()
        first.end()
        assert max(first.rows("sft")) < 6 and not first.rows("rl")  # killed during SFT

        # 2, 3. resumed mid-SFT; the engine killed as SFT's last row appears (its push follows: the
        # engine, stopped, holds it up until the SIGKILL); a trainer rank killed once RL step 2's
        # state is complete (RL runs to step 6)
        started = time.time()
        second = Run(out, tmp_path / "second", "trainer.resume=auto")
        runs.append(second)
        second.wait_for(lambda: role_pids(second.marker, "RolloutWorker"), "the rollout engine")
        engine = role_pids(second.marker, "RolloutWorker")
        assert len(engine) == 1
        second.wait_for(lambda: 6 in second.rows("sft", since=started), "SFT's last step")
        kill_in_flight(engine[0])
        second.wait_for(_complete(out, "rl", 2), "the state of RL step 2")
        pids = role_pids(second.marker, "TrainerWorker")
        assert len(pids) == 2  # the actor's two ranks, in no particular order
        t = time.time()
        os.kill(pids[1], signal.SIGKILL)
        assert second.finish() == 2, second.stderr[-4000:]
        stopped_in = second.ended - t
        k_sft = int(re.search(r"continuing at SFT step (\d+)", second.stdout).group(1)) - 1
        assert 2 <= k_sft < 6
        pushed = re.search(r"rollout engine 0 died \(.*\) during a weight push; replacing it", second.stdout)
        assert pushed, second.stdout[-4000:]
        replaced_in = float(re.search(r"rollout engine\(s\) 0 replaced in ([\d.]+)s", second.stdout[pushed.end():])[1])
        # the rank that died is named with its pid (which rank a pid holds is Ray's choice)
        assert re.search(rf"trainer role 'actor' rank [01] \(pid {pids[1]}\)", second.stderr), second.stderr[-4000:]
        last = max(run_state.states(out, ["sft", "rl"]))[2]
        assert last.name.startswith("state-rl-step") and f"trainer.resume={last}" in second.stderr
        assert not role_pids(second.marker, "TrainerWorker") and not role_pids(second.marker, "RolloutWorker")

        # 4. resumed in RL; the engine hung at the second resumed step
        k_rl = int(last.name.removeprefix("state-rl-step"))
        assert k_rl <= 4
        started = time.time()
        third = Run(out, tmp_path / "third", "trainer.resume=auto")
        runs.append(third)
        third.wait_for(lambda: role_pids(third.marker, "RolloutWorker"), "the rollout engine")
        engine = role_pids(third.marker, "RolloutWorker")
        assert len(engine) == 1
        third.wait_for(lambda: third.rows("rl", since=started), "the first resumed RL step")
        os.kill(engine[0], signal.SIGSTOP)  # hangs the next step's generation until the timeout
        assert min(third.rows("rl", since=started)) == k_rl + 1
        assert third.finish() == 0, third.stderr[-4000:]
        assert full.finish() == 0, full.stderr[-4000:]
    finally:
        for run in runs:
            run.end()

    assert "rollout engine 0 gave no answer within" in third.stdout
    rl = third.rows("rl")
    hung = k_rl + 2
    # counted over the whole run: the replacement at SFT's end, carried by the state, then the hang
    assert [rl[s]["rollout/restarts_total"] for s in range(1, 7)] == [1.0] * (hung - 1) + [2.0] * (7 - hung)
    assert rl[hung]["time/rollout_recovery"] > 0
    assert rl[hung]["time/generate"] > 10  # waited out the timeout first
    print(f"trainer rank kill: stopped {stopped_in:.1f} s after; resumed mid-SFT at step {k_sft + 1}, mid-RL at "
          f"step {k_rl + 1}; rollout recovery: {replaced_in:.1f} s after the SIGKILL in the push, "
          f"{rl[hung]['time/rollout_recovery']:.1f} s after the hang (plus the 10 s timeout)")
    for step in (1, hung):  # the fresh engines serve the trained policy, not the weights they loaded
        assert rl[step]["rollout/mismatch_kl_k3"] < 1e-3 and rl[step]["rollout/logprob_abs_diff_max"] < 1e-4

    a_sft, a_rl, b_sft = full.rows("sft"), full.rows("rl"), third.rows("sft")
    steps = [(r["stage"], r["step"]) for r in read_metrics(out) if "sft/loss" in r or "reward/mean" in r]
    assert steps == [("sft", s) for s in range(1, 7)] + [("rl", s) for s in range(1, 7)]  # each once, in order
    for step in range(k_sft + 1, 7):
        _same(a_sft[step], b_sft[step], f"sft step {step}")
    for step in range(1, 7):  # steps 1 to k_rl: the second run's, after its engine was replaced
        _same(a_rl[step], rl[step], f"rl step {step}")
        assert a_rl[step]["actor/grad_norm"] > 0
    evals = lambda run: [(r["stage"], r["step"], r["eval/accuracy"]) for r in read_metrics(run.out) if "eval/accuracy" in r]
    assert evals(full) == evals(third)
    wa = load_file(full.out / "checkpoints" / "final" / "model.safetensors")
    wb = load_file(out / "checkpoints" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)
