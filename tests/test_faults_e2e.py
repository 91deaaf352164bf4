"""Faults injected into the real stack (Ray, vLLM, the Automodel trainer group, the embedded model)."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from procs import session_processes
from safetensors.torch import load_file

from rlhf.output import run_state
from rlhf.output.metrics import read_metrics, rl_steps

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
         "actor.world_size=1", f"trainer.output_dir={out}"],
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


def _role_pids(marker: str, role: str) -> list[int]:
    """Live Ray worker processes of the run started with RLHF_FAULT_MARKER=marker that hold a `role`
    (TrainerWorker, RolloutWorker)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or role.encode() not in (proc / "cmdline").read_bytes():
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if f"RLHF_FAULT_MARKER={marker}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except (OSError, IndexError):
            continue
    return pids


# SFT then GRPO, a state every 2 steps of either. The entropy bonus gives every step a gradient
# (a few SFT steps leave every reward 0), so losses, gradient norms and the weights move.
# Responses of up to 24 tokens make a generation call last long enough to be caught in flight.
ARGS = ["sft.steps=6", "rl.steps=6", "rl.prompts_per_step=8", "rl.n=4", "rl.max_new_tokens=24", "task.num_eval=16",
        "trainer.save_every=2",
        "algo.entropy_coef=0.01", "rollout.generate_timeout_s=10", "trainer.keep_last=0"]
# what a run computes; times and the restart count are how it went
_HOW = ("time", "throughput/", "weight_sync/", "rollout/restarts_total")


class Run:
    """`python -m rlhf.main ARGS` in its own session, with a marker in its environment to find its processes."""

    def __init__(self, out: Path, log: Path, *args: str):
        self.out, self.log, self.marker = out, log, uuid.uuid4().hex
        with open(f"{log}.out", "w") as stdout, open(f"{log}.err", "w") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-m", "rlhf.main", *ARGS, f"trainer.output_dir={out}", *args],
                                         stdout=stdout, stderr=stderr, start_new_session=True,
                                         env={**os.environ, "RLHF_FAULT_MARKER": self.marker})
        self.stdout = self.stderr = ""
        self.ended = None

    def wait_for(self, done, what: str, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while not done():
            assert self.proc.poll() is None, f"the run ended before {what}: {Path(f'{self.log}.err').read_text()[-4000:]}"
            assert time.time() < deadline, f"no {what} after {timeout} s"
            time.sleep(0.02)

    def rows(self, stage: str, since: float = 0.0) -> dict[int, dict]:
        """Step rows of `stage` so far (SFT: with the loss; RL: with rollout metrics), written after `since`."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return {}
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
        return {r["step"]: r for r in rows
                if r["stage"] == stage and ("sft/loss" in r or "reward/mean" in r) and r["time"] > since}

    def finish(self, timeout: float = 600) -> int:
        try:
            self.proc.wait(timeout=timeout)
            self.ended = time.time()
        finally:
            self.end()
        self.stdout, self.stderr = Path(f"{self.log}.out").read_text(), Path(f"{self.log}.err").read_text()
        return self.proc.returncode

    def end(self) -> None:
        """SIGKILL whatever of the run is left (a SIGKILLed driver leaves Ray's processes behind a while)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        time.sleep(1)
        for pid in session_processes(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _same(a: dict, b: dict, where: str) -> None:
    keys = {k for k in a if not k.startswith(_HOW)}
    assert keys == {k for k in b if not k.startswith(_HOW)}, where
    for k in sorted(keys):
        assert a[k] == b[k], (where, k, a[k], b[k])


def _kill_in_flight(pid: int) -> None:
    """Called as a step's row appears, just before the next step's generation: stopped, the engine
    cannot answer that call; once the driver has waited on it for a second, SIGKILL kills it with
    the call in flight (a death, well within rollout.generate_timeout_s, not a hang)."""
    os.kill(pid, signal.SIGSTOP)
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)


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
    with a generation call in flight: the next test, and tests/test_rollout_recovery.py.)"""
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
        second.wait_for(lambda: _role_pids(second.marker, "RolloutWorker"), "the rollout engine")
        engine = _role_pids(second.marker, "RolloutWorker")
        assert len(engine) == 1
        second.wait_for(lambda: 6 in second.rows("sft", since=started), "SFT's last step")
        _kill_in_flight(engine[0])
        second.wait_for(_complete(out, "rl", 2), "the state of RL step 2")
        pids = _role_pids(second.marker, "TrainerWorker")
        assert len(pids) == 2  # the actor's two ranks
        t = time.time()
        os.kill(pids[1], signal.SIGKILL)
        assert second.finish() == 2, second.stderr[-4000:]
        stopped_in = second.ended - t
        k_sft = int(re.search(r"continuing at SFT step (\d+)", second.stdout).group(1)) - 1
        assert 2 <= k_sft < 6
        pushed = re.search(r"rollout engine 0 died \(.*\) during a weight push; replacing it", second.stdout)
        assert pushed, second.stdout[-4000:]
        replaced_in = float(re.search(r"rollout engine\(s\) 0 replaced in ([\d.]+)s", second.stdout[pushed.end():])[1])
        assert f"pid {pids[1]}" in second.stderr and "trainer role 'actor' rank 1" in second.stderr
        last = max(run_state.states(out, ["sft", "rl"]))[2]
        assert last.name.startswith("state-rl-step") and f"trainer.resume={last}" in second.stderr
        assert not _role_pids(second.marker, "TrainerWorker") and not _role_pids(second.marker, "RolloutWorker")

        # 4. resumed in RL; the engine hung at the second resumed step
        k_rl = int(last.name.removeprefix("state-rl-step"))
        assert k_rl <= 4
        started = time.time()
        third = Run(out, tmp_path / "third", "trainer.resume=auto")
        runs.append(third)
        third.wait_for(lambda: _role_pids(third.marker, "RolloutWorker"), "the rollout engine")
        engine = _role_pids(third.marker, "RolloutWorker")
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
        run.wait_for(lambda: _role_pids(run.marker, "RolloutWorker"), "the rollout engine")
        engine = _role_pids(run.marker, "RolloutWorker")
        assert len(engine) == 1
        run.wait_for(lambda: run.rows("rl"), "RL step 1")
        _kill_in_flight(engine[0])
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
