"""Processes of the jobs that the fault and stop tests start, find and kill."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path


def session_processes(sid: int) -> list[int]:
    """Processes of session `sid` (a driver started with start_new_session, and its children)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                found.append(int(pid))
        except (OSError, IndexError):
            pass
    return found


def role_pids(marker: str, role: str) -> list[int]:
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
FAULT_ARGS = ["sft.steps=6", "rl.steps=6", "rl.prompts_per_step=8", "rl.n=4", "rl.max_new_tokens=24",
              "task.num_eval=16", "trainer.save_every=2", "algo.entropy_coef=0.01", "rollout.generate_timeout_s=10",
              "trainer.keep_last=0"]


class Run:
    """`python -m rlhf.main FAULT_ARGS` in its own session, with a marker in its environment to find its processes."""

    def __init__(self, out: Path, log: Path, *args: str):
        self.out, self.log, self.marker = out, log, uuid.uuid4().hex
        with open(f"{log}.out", "w") as stdout, open(f"{log}.err", "w") as stderr:
            self.proc = subprocess.Popen([sys.executable, "-m", "rlhf.main", *FAULT_ARGS, f"trainer.output_dir={out}", *args],
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


def kill_in_flight(pid: int) -> None:
    """Called as a step's row appears, just before the next step's generation: stopped, the engine
    cannot answer that call; once the driver has waited on it for a second, SIGKILL kills it with
    the call in flight (a death, well within rollout.generate_timeout_s, not a hang)."""
    os.kill(pid, signal.SIGSTOP)
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
