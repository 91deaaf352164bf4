"""PPO end to end, then exact resume through the real entry point: a run resumed from the
uninterrupted run's step-2 state must reproduce its steps 3-6 to the bit (the reference is that
run). Every piece of PPO's state travels: two optimizers, LR schedules, the KL coefficient, the
data position, the sampling seeds. (A run SIGKILLed and resumed with trainer.resume=auto:
tests/test_faults_resume_e2e.py.)"""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForTokenClassification

from rlhf.config import load_config
from rlhf.output.metrics import read_metrics, rl_steps

pytestmark = pytest.mark.e2e

# PPO with a critic, critic pre-training and an adaptive KL controller against a reference: every
# piece of state (two optimizers, LR schedules, KL coefficient, data position, sampling seeds).
# RL starts from the shared 200-step SFT policy (conftest.sft_policy), a reward in a quarter to a
# half of its groups: rewards, advantages and gradients are live. One trainer rank (a sharded
# state resumes exactly in tests/test_faults_resume_e2e.py and tests/test_reshard_resume.py).
ARGS = ["algo=ppo", "sft.steps=0", "rl.steps=4", "rl.prompts_per_step=8", "algo.critic_pretrain_steps=1",
        "algo.kl_coef=0.05", "algo.kl_target=0.01", "trainer.save_every=2", "actor.world_size=1"]
COMPARED = ["reward/mean", "reward/std", "actor/policy_loss", "actor/grad_norm", "actor/clip_frac", "actor/kl_coef",
            "actor/kl_rollout_batch", "critic/value_loss", "critic/grad_norm", "critic/explained_var",
            "response/length_mean"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "rlhf.main", *ARGS, *args], capture_output=True, text=True, timeout=900)


@pytest.fixture
def policy(sft_policy, ray_cluster):
    return f"model.path={sft_policy}", f"trainer.ray_address={ray_cluster}"


def test_ppo_run_then_a_resumed_run_continues_exactly(tmp_path, policy):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    proc = _run(*policy, f"trainer.output_dir={full}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    a = rl_steps(read_metrics(full))
    assert sorted(a) == [1, 2, 3, 4]
    for r in a.values():
        assert r["critic/value_loss"] >= 0 and "critic/explained_var" in r and "critic/grad_norm" in r
        assert r["rollout/logprob_abs_diff_max"] < 1e-4
    # Step 1 pre-trains the critic only: no policy update, no weight push.
    assert a[1]["actor/updated"] == 0 and "actor/policy_loss" not in a[1] and a[1]["time/push"] == 0
    assert all(a[s]["actor/updated"] == 1 and "actor/policy_loss" in a[s] for s in (2, 3, 4))
    # The trained critic is saved as a plain HF token-classification model; its head started at
    # zero, so non-zero values mean the saved weights are the trained ones.
    critic = AutoModelForTokenClassification.from_pretrained(full / "checkpoints" / "critic")
    assert critic.config.num_labels == 1
    assert critic(input_ids=torch.tensor([[1, 2, 3, 4]])).logits.abs().max() > 1e-4

    state = full / "checkpoints" / "state-rl-step2"
    assert all((full / "checkpoints" / f"state-rl-step{s}" / "COMPLETE").is_file() for s in (2, 4))

    # Resumed from the named step-2 state into a new folder, to the end
    proc = _run(*policy, f"trainer.output_dir={resumed}", f"trainer.resume={state}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "continuing at RL step 3" in proc.stdout
    b = rl_steps(read_metrics(resumed))
    assert sorted(b) == [3, 4]  # no SFT, no steps 1-2, none twice
    for step in (3, 4):  # the comparison means something only if there was something to learn
        assert a[step]["reward/groups_with_signal"] > 0 and a[step]["actor/grad_norm"] > 0
        for key in COMPARED:
            assert key in a[step], key
            assert a[step][key] == b[step][key], (step, key, a[step][key], b[step][key])
    for name in ("rl", "critic"):
        wa = load_file(full / "checkpoints" / name / "model.safetensors")
        wb = load_file(resumed / "checkpoints" / name / "model.safetensors")
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[name], wb[name]) for name in wa)
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed_from"] == str(state)
    assert summary["accuracy_at_start"] == json.loads((full / "summary.json").read_text())["accuracy_at_start"] > 0.1


def test_resume_with_a_different_config_fails_before_any_work(tmp_path):
    fake = tmp_path / "state"
    fake.mkdir()
    proc = _run(f"trainer.output_dir={tmp_path / 'x'}", f"trainer.resume={fake}")
    assert proc.returncode == 2 and "driver.json" in proc.stderr
    # a real state, resumed with another rl.n: the difference is named
    saved = dataclasses.asdict(load_config(ARGS))
    (fake / "driver.json").write_text(json.dumps({"config": saved, "groups": [], "start_path": str(tmp_path)}))
    proc = _run(f"trainer.output_dir={tmp_path / 'y'}", f"trainer.resume={fake}", "rl.n=4")
    assert proc.returncode == 2
    assert "rl.n: saved 8, now 4" in proc.stderr, proc.stderr
    assert not (tmp_path / "y" / "metrics.jsonl").exists()
