"""Role processes on a real local Ray cluster, through the entry point: more than one rollout
engine fits the cluster the run starts, and a role the cluster cannot hold fails at once."""

import subprocess
import sys

import pytest

from rlhf.output.metrics import read_metrics, rl_steps

pytestmark = pytest.mark.e2e


def _main(*args, timeout):
    return subprocess.run([sys.executable, "-m", "rlhf.main", *args], capture_output=True, text=True, timeout=timeout)


def test_two_rollout_engines_run_the_job(tmp_path):
    """Two engines and the actor's two ranks: the local cluster once had CPUs for one engine, so
    the second rank was never started and the first waited in its rendezvous for 600 s."""
    out = tmp_path / "run"
    proc = _main("rollout.num_engines=2", "sft.steps=2", "rl.steps=1", "rl.prompts_per_step=8", "rl.n=4",
                 "task.num_eval=16", f"trainer.output_dir={out}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "sft/loss" in r] == [1, 2] and sorted(rl_steps(rows)) == [1]
    assert rl_steps(rows)[1]["rollout/logprob_abs_diff_max"] < 1e-4  # both engines took the pushed weights


def test_a_role_the_cluster_cannot_hold_fails_at_once_naming_it(tmp_path):
    """trainer.num_cpus=1: the rollout engine would take the one CPU and the actor's ranks would wait
    forever (Ray keeps them pending without a word); the config check refuses it before Ray starts."""
    out = tmp_path / "run"
    proc = _main("trainer.num_cpus=1", f"trainer.output_dir={out}", timeout=300)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "trainer.num_cpus=1 gives the local Ray fewer CPUs than the roles ask for (3:" in proc.stderr
    assert "set trainer.num_cpus=3" in proc.stderr
    assert "roles ready" not in proc.stdout
