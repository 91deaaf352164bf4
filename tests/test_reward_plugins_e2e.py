"""Reward plugins used by real runs of `python -m rlhf.main`: one from an installed package's
`rlhf.rewards` entry point, one by file path; a plugin failing too often stops the run cleanly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.output.metrics import read_metrics, rl_steps

pytestmark = pytest.mark.e2e

PLUGINS = Path(__file__).with_name("reward_plugins.py")
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


def rl_rows(out: Path) -> list[dict]:
    return list(rl_steps(read_metrics(out)).values())


def test_entry_point_and_file_path_plugins_in_one_run_failures_counted_and_the_run_goes_on(tmp_path):
    """Two reward functions summed: one from an installed package's entry point, one by file path
    that fails on some prompts (counted, logged, the run goes on)."""
    site = tmp_path / "site"
    install_plugin_package(site)
    fns = f"reward.fns=[{{name: test_plugin, weight: 1.0}}, {{name: '{PLUGINS}:flaky', weight: 1.0}}]"
    proc = run(tmp_path / "run", "reward.fn=null", fns, "reward.max_error_rate=0.9",
               env={"PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = rl_rows(tmp_path / "run")
    assert len(rows) == 2 and all(r["reward/plugin_seen"] == 1.0 for r in rows)
    assert all("reward/test_plugin" in r and "reward/flaky" in r for r in rows)
    assert sum(r.get("reward/errors/exception", 0) for r in rows) > 0
    assert "flaky plugin failed" in (tmp_path / "run" / "reward_errors.log").read_text()
    # GRPO with one update per batch takes its old log-probs from the training forward: they are
    # still the rows vLLM sampled, in order (fp32 vLLM and trainer agree to ~1e-6)
    assert all(r["rollout/logprob_abs_diff_max"] < 1e-4 for r in rows)


def test_error_rate_breach_stops_the_run_with_a_clear_message_and_keeps_the_policy(tmp_path):
    # 32 samples a step; the limit is judged from 64 calls on, so the run stops in step 2
    proc = run(tmp_path / "run", f"reward.fn={PLUGINS}:raises", "reward.max_error_rate=0.5")
    assert proc.returncode == 2
    assert "reward.max_error_rate=0.5" in proc.stderr and "this plugin always fails" in proc.stderr
    assert (tmp_path / "run" / "checkpoints" / "rl-stopped-at-step1" / "model.safetensors").exists()
