"""A sequence of stages through the real entry point: [sft, rl, rl] with another reward in the
last stage, then a restart on the same output folder after the second stage finished."""

import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlhf.output.metrics import read_metrics

pytestmark = pytest.mark.e2e

ARGS = ["stages=[sft,rl,rl]", "stage_overrides={rl2: {reward: {fn: math_answer}, rl: {steps: 2, lr: 1.0e-3}}}",
        "sft.steps=10", "rl.steps=2", "rl.prompts_per_step=8", "rl.n=4", "task.num_eval=64", "actor.world_size=1",
        # 10 SFT steps leave every reward 0 (no advantage): a small entropy bonus makes RL move the policy
        "algo.entropy_coef=0.01"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "rlhf.main", *ARGS, *args], capture_output=True, text=True, timeout=900)


def test_three_stages_then_a_restart_skips_the_finished_ones(tmp_path, ray_cluster):
    out = tmp_path / "run"
    proc = _run(f"trainer.ray_address={ray_cluster}", f"trainer.output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_metrics(out)
    steps = {name: [r["step"] for r in rows if r["stage"] == name and ("sft/loss" in r or "reward/mean" in r)]
             for name in ("sft", "rl", "rl2")}
    assert steps == {"sft": list(range(1, 11)), "rl": [1, 2], "rl2": [1, 2]}
    evals = [(r["stage"], r["step"]) for r in rows if "eval/accuracy" in r]
    assert evals == [("sft", 0), ("sft", 10), ("rl", 2), ("rl2", 2)]
    # the last stage optimised the other reward: math_answer's own score is logged only there
    assert all("reward/has_answer" in r for r in rows if r["stage"] == "rl2" and "reward/mean" in r)
    assert not any("reward/has_answer" in r for r in rows if r["stage"] == "rl")
    for name in ("sft", "rl", "rl2"):
        assert (out / "checkpoints" / name / "stage.json").is_file()
    first_rl2 = load_file(out / "checkpoints" / "rl2" / "model.safetensors")
    rl = load_file(out / "checkpoints" / "rl" / "model.safetensors")
    assert any(not torch.equal(first_rl2[k], rl[k]) for k in rl)  # the third stage trained

    # The run stopped during the third stage: its checkpoint is gone; restart on the same folder.
    shutil.rmtree(out / "checkpoints" / "rl2")
    proc = _run(f"trainer.ray_address={ray_cluster}", f"trainer.output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "stage sft finished in an earlier run" in proc.stdout and "stage rl finished in an earlier run" in proc.stdout
    new = read_metrics(out)[len(rows):]
    assert {r["stage"] for r in new} == {"rl2"}  # nothing of sft or rl ran again, no start evaluation
    assert [r["step"] for r in new if "reward/mean" in r] == [1, 2]
    # rl2 continued from checkpoints/rl on disk exactly as it did from the live weights
    again = load_file(out / "checkpoints" / "rl2" / "model.safetensors")
    gap = max(float((again[k] - first_rl2[k]).abs().max()) for k in again)
    print(f"rl2 after a restart vs uninterrupted: max abs weight diff {gap:.2e}")
    assert gap < 1e-5

    # A finished stage is not silently reused by a run asking for something else (here the first RL
    # stage's learning rate; the SFT stage it does not touch still matches), and the refused run
    # leaves the folder as it was
    config = (out / "config.json").read_text()
    proc = _run(f"trainer.ray_address={ray_cluster}", f"trainer.output_dir={out}", "stage_overrides.rl.rl.lr=1.0e-4")
    assert proc.returncode == 2 and "checkpoints/rl is a finished rl stage run with other settings" in proc.stderr, \
        proc.stderr[-2000:]
    assert "rl.lr: saved 0.0005, now 0.0001" in proc.stderr
    assert (out / "config.json").read_text() == config
