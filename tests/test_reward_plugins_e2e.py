"""Reward plugins used by real runs of `python -m rlhf.main`: one from an installed package's
`rlhf.rewards` entry point, one by file path (in a LoRA run: the product's LoRA path shares the
job); a plugin failing too often stops the run cleanly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.output.metrics import read_metrics, rl_steps

pytestmark = pytest.mark.e2e

PLUGINS = Path(__file__).with_name("reward_plugins.py")
LENGTH = Path(__file__).resolve().parent.parent / "benchmarks" / "reference_rewards.py:length_reward"
SHORT = ["sft.steps=0", "rl.steps=2", "rl.prompts_per_step=8", "rl.n=4", "reward.num_workers=1", "actor.world_size=1"]


def run(out: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlhf.main", *SHORT, f"trainer.output_dir={out}", *overrides],
        capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})},
    )


def install_plugin_package(site: Path) -> None:
    """What pip leaves for a package declaring `[project.entry-points."rlhf.rewards"]`."""
    pkg = site / "rlhf_test_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "def score(prompt, response, ground_truth, **extra):\n"
        "    return {'reward': float(response.strip() == ground_truth), 'plugin_seen': 1.0}\n"
    )
    dist = site / "rlhf_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: rlhf-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlhf.rewards]\ntest_plugin = rlhf_test_plugin:score\n")


def test_entry_point_and_file_path_plugins_with_lora_in_one_run(tmp_path, tiny_model, ray_cluster):
    """One RL run from a model folder, testing two things.
    Rewards: three functions summed, one from an installed package's entry point, one by file
    path that fails on some prompts (counted, logged, the run goes on), and the response length
    (it varies, so every group has a signal and the adapters move every step).
    LoRA: a KL penalty to the reference (the actor with its adapters off); after every push vLLM
    computes what the trainer computes through its adapters, and the final checkpoint is a plain
    HF model whose only changed weights are the adapted layers'."""
    site = tmp_path / "site"
    install_plugin_package(site)
    fns = (f"reward.fns=[{{name: test_plugin, weight: 1.0}}, {{name: '{PLUGINS}:flaky', weight: 1.0}}, "
           f"{{name: '{LENGTH}'}}]")
    out = tmp_path / "run"
    proc = run(out, f"trainer.ray_address={ray_cluster}", "stages=[rl]", f"model.path={tiny_model}", "rl.steps=4", "reward.fn=null", fns,
               "reward.max_error_rate=0.9", "actor.lora.rank=8", "algo.kl_coef=0.05", "rl.lr=1e-2",
               env={"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rl_steps(read_metrics(out))
    assert sorted(rows) == [1, 2, 3, 4]
    assert all(r["reward/plugin_seen"] == 1.0 for r in rows.values())
    assert all("reward/test_plugin" in r and "reward/flaky" in r and "reward/length_reward" in r for r in rows.values())
    assert sum(r.get("reward/errors/exception", 0) for r in rows.values()) > 0
    assert "flaky plugin failed" in (out / "reward_errors.log").read_text()

    assert "(LoRA rank 8 on 28 layers)" in proc.stdout
    assert "reference: the actor's weights with its LoRA adapters off" in proc.stdout  # no second model
    for r in rows.values():
        assert r["actor/grad_norm"] > 0
        # fp32 vLLM vs the trainer's adapters, after every push; GRPO with one update per batch takes
        # its old log-probs from the training forward: they are still the rows vLLM sampled, in order
        assert r["rollout/logprob_abs_diff_max"] < 1e-4
    print({s: (r["reward/mean"], r["rollout/logprob_abs_diff_max"], r["actor/kl_ref"]) for s, r in rows.items()})
    assert rows[1]["actor/kl_ref"] == 0  # B starts at zero: policy and reference are one model
    assert all(rows[s]["actor/kl_ref"] > 0 for s in (2, 3, 4))
    base = load_file(str(Path(tiny_model) / "model.safetensors"))
    final = load_file(str(out / "checkpoints" / "final" / "model.safetensors"))
    assert sorted(final) == sorted(base)
    changed = {k for k in base if not torch.equal(final[k], base[k])}
    assert changed and all(k.endswith("_proj.weight") for k in changed), sorted(changed)
    assert max((final[k] - base[k]).abs().max().item() for k in changed) > 1e-3


def test_error_rate_breach_stops_the_run_with_a_clear_message_and_keeps_the_policy(tmp_path, ray_cluster):
    # 32 samples a step; the limit is judged from 64 calls on, so the run stops in step 2
    proc = run(tmp_path / "run", f"trainer.ray_address={ray_cluster}", f"reward.fn={PLUGINS}:raises",
               "reward.max_error_rate=0.5")
    assert proc.returncode == 2
    assert "reward.max_error_rate=0.5" in proc.stderr and "this plugin always fails" in proc.stderr
    assert (tmp_path / "run" / "checkpoints" / "rl-stopped-at-step1" / "model.safetensors").exists()
