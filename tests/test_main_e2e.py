"""The whole job through the real entry point: Ray, vLLM, the Automodel trainer group, a few steps."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.metrics import read_metrics

pytestmark = pytest.mark.e2e


def test_main_runs_sft_then_grpo_and_writes_the_output_contract(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.main", "algo=grpo", "actor.engine=automodel", "sft.steps=20", "rl.steps=3",
         "rl.prompts_per_step=8", "algo.kl_coef=0.05", f"trainer.output_dir={out}"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_metrics(out)
    assert all("stage" in r and "step" in r for r in rows)
    sft = [r for r in rows if r["stage"] == "sft" and "sft/loss" in r]
    rl = [r for r in rows if r["stage"] == "rl" and "reward/mean" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in sft] == list(range(1, 21))
    assert [r["step"] for r in rl] == [1, 2, 3]
    assert [(r["stage"], r["step"]) for r in evals] == [("sft", 0), ("sft", 20), ("rl", 3)]
    assert sft[-1]["sft/loss"] < sft[0]["sft/loss"]  # the warm-start learns
    for r in rl:
        assert 0.0 <= r["reward/mean"] <= 1.0
        assert r["rollout/logprob_abs_diff_max"] < 1e-4  # fp32 vLLM vs trainer, after every push
        assert r["actor/kl_ref"] >= 0.0  # the frozen reference is in the loss (k3 is non-negative)
        for k in ("time/rollout", "time/train", "time/push", "reward/groups_with_signal"):
            assert k in r
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accuracy_after_rl"] == evals[-1]["eval/accuracy"]
    # each stage hands on an ordinary HF checkpoint
    for stage in ("sft", "rl"):
        model = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / stage, dtype=torch.float32)
        assert model.config.model_type == "qwen2"
    assert "grpo" in proc.stderr  # the progress bar
