"""Graceful stop through the real entry point: SIGTERM during RL saves a state at the step
boundary, shuts Ray down, and leaves no process and nothing in /dev/shm behind."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from rlhf.output import run_state
from rlhf.output.metrics import read_metrics, rl_steps

pytestmark = pytest.mark.e2e


def _session(sid: int) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                found.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:100])
        except (OSError, IndexError):
            pass
    return found


def _orphaned(names: set[str]) -> set[str]:
    """The /dev/shm entries of `names` that no living process holds open or maps: left behind
    (tests running beside this one may hold entries of their own meanwhile)."""
    held = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            held.update(os.path.basename(os.readlink(f"/proc/{pid}/fd/{fd}")) for fd in os.listdir(f"/proc/{pid}/fd"))
            held.update(line.rsplit("/dev/shm/", 1)[1].split(" ")[0] for line in Path(f"/proc/{pid}/maps").read_text()
                        .splitlines() if "/dev/shm/" in line)
        except OSError:
            pass
    return {n for n in names if n not in held and os.path.exists(f"/dev/shm/{n}")}


def test_sigterm_during_rl_saves_a_loadable_state_and_leaves_nothing_running(tmp_path):
    out = tmp_path / "run"
    shm_before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf.main", "sft.steps=0", "rl.steps=50", "rl.prompts_per_step=8",
         f"trainer.output_dir={out}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if (out / "metrics.jsonl").exists() and rl_steps(read_metrics(out)):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-4000:]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-4000:]
    saved = re.search(r"stopped by SIGTERM after RL step (\d+); the state is saved in (\S+):", stderr)
    assert saved, stderr[-4000:]
    step, state = int(saved.group(1)), Path(saved.group(2))
    assert sorted(rl_steps(read_metrics(out))) == list(range(1, step + 1)) and step < 50

    # Ray's processes exit as ray.shutdown() returns; on a loaded machine a rank may take a few
    # seconds to notice and be reaped
    deadline = time.time() + 30
    while _session(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert _session(proc.pid) == []
    assert _orphaned(set(os.listdir("/dev/shm")) - shm_before) == set()

    assert run_state.problem(state) is None
    driver = json.loads((state / "driver.json").read_text())
    assert driver["step"] == step
    # The sharded state loads: its weights are the model's parameters, by name and shape. An
    # untrained policy rarely earns a reward: with no group ever showing a reward difference every
    # advantage is 0 and Adam leaves the weights exactly as they started; otherwise they moved.
    dcp_to_torch_save(state / "actor", tmp_path / "actor.pt")
    model = torch.load(tmp_path / "actor.pt", weights_only=False)["model"]
    start = load_file(Path(driver["start_path"]) / "model.safetensors")
    for name, tensor in start.items():
        assert model[name].shape == tensor.shape, name
    learned = any(r["reward/groups_with_signal"] > 0 for r in rl_steps(read_metrics(out)).values())
    assert any(not torch.equal(model[name], start[name]) for name in start) == learned
