"""The built-in tool task end to end on CPU (`task.name=arithmetic_tools`): multi-turn SFT, then
multi-turn GRPO with the calculator environment, through the real entry point; a run resumed
mid-RL must reproduce the uninterrupted run's later steps and final weights to the bit."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlhf.output.metrics import read_metrics, rl_steps

pytestmark = pytest.mark.e2e

ARGS = ["task.name=arithmetic_tools", "sft.steps=40", "sft.batch_size=32", "rl.steps=3", "rl.prompts_per_step=8",
        "rl.n=4", "task.num_eval=32", "trainer.save_every=1", "actor.world_size=1"]
COMPARED = ["reward/mean", "reward/std", "actor/policy_loss", "actor/grad_norm", "response/length_mean",
            "rollout/logprob_abs_diff_max", "agent/turns_mean", "agent/tool_calls_mean", "agent/masked_token_share"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "rlhf.main", *ARGS, *args], capture_output=True, text=True, timeout=900)


def test_tool_task_runs_multi_turn_and_resumes_exactly(tmp_path, ray_cluster):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    proc = _run(f"trainer.ray_address={ray_cluster}", f"trainer.output_dir={full}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    a = rl_steps(read_metrics(full))
    assert sorted(a) == [1, 2, 3]
    for r in a.values():
        # every sampled token of every turn: the trainer's log-prob equals vLLM's (fp32)
        assert r["rollout/logprob_abs_diff_max"] < 1e-4, r["rollout/logprob_abs_diff_max"]
        assert r["agent/turns_mean"] >= 1 and 0 < r["agent/masked_token_share"] < 1
    # After SFT on demonstrations that call the calculator, the policy calls it: trajectories
    # have tool turns whose results sit in the context, masked out of the loss.
    assert max(r["agent/tool_calls_mean"] for r in a.values()) > 0

    proc = _run(f"trainer.ray_address={ray_cluster}", f"trainer.output_dir={resumed}", f"trainer.resume={full / 'checkpoints' / 'state-rl-step2'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    b = rl_steps(read_metrics(resumed))
    assert sorted(b) == [3]
    for step in (3,):
        for key in COMPARED:
            assert a[step][key] == b[step][key], (step, key, a[step][key], b[step][key])
    wa = load_file(full / "checkpoints" / "final" / "model.safetensors")
    wb = load_file(resumed / "checkpoints" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
