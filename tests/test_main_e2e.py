"""The whole job through the real entry point: Ray, vLLM, the Automodel trainer group, a few steps;
then what the run left for people to read: tracker records, read back with each tracker's own
reader, and the report. One run serves every test here."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.metrics import read_metrics

pytestmark = pytest.mark.e2e

# every tracker that is installed; the tests of the others are skipped, naming the extra
TRACKERS = ["console"] + [t for t in ("tensorboard", "wandb", "mlflow") if importlib.util.find_spec(t)]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = tmp_path_factory.mktemp("main") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.main", "algo=grpo", "actor.engine=automodel", "sft.steps=20", "rl.steps=3",
         "rl.prompts_per_step=8", "algo.kl_coef=0.05", f"trainer.output_dir={out}",
         f"trainer.loggers=[{','.join(TRACKERS)}]"],
        capture_output=True, text=True, timeout=900,
    )
    return out, proc


def _needs(tracker):
    return pytest.mark.skipif(tracker not in TRACKERS,
                              reason=f"{tracker} is not installed (pip install 'rlhf[{tracker}]')")


def _expected(out) -> dict[str, dict[int, float]]:
    """What every tracker must hold: each number of metrics.jsonl under <stage>/<key>, by step."""
    want: dict[str, dict[int, float]] = {}
    for row in read_metrics(out):
        for k, v in row.items():
            if k not in ("stage", "step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                want.setdefault(f"{row['stage']}/{k}", {})[row["step"]] = float(v)
    return want


def test_main_runs_sft_then_grpo_and_writes_the_output_contract(job):
    out, proc = job
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
    assert "[grpo 3] mean=" in proc.stdout  # the console tracker's step line
    assert "[eval rl step 3] accuracy=" in proc.stdout


@_needs("tensorboard")
def test_tensorboard_events_hold_the_values_of_metrics_jsonl(job):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = job
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    want = _expected(out)
    assert set(events.Tags()["scalars"]) == set(want)
    for tag, by_step in want.items():
        got = {e.step: e.value for e in events.Scalars(tag)}
        assert got.keys() == by_step.keys(), tag
        for step, value in by_step.items():  # TensorBoard stores float32
            assert math.isclose(got[step], value, rel_tol=1e-6, abs_tol=1e-30), (tag, step, got[step], value)


@_needs("mlflow")
def test_mlflow_run_reads_back_through_mlflowclient(job, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    out, _ = job
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["rl.steps"] == "3"
    want = _expected(out)
    for tag in ("rl/reward/mean", "rl/actor/grad_norm", "sft/sft/loss", "sft/eval/accuracy"):
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, tag)}
        assert got == want[tag], tag


@_needs("wandb")
def test_wandb_offline_run_folder_exists(job):
    out, _ = job
    (run,) = (out / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb")), sorted(p.name for p in run.iterdir())


def test_report_is_built_at_the_end_with_its_plots(job):
    out, _ = job
    report = (out / "report" / "report.md").read_text()
    assert "Status: **finished**" in report
    assert "`rl.steps=3` (default `60`)" in report and "`algo.kl_coef=0.05` (default `0.0`)" in report
    for plot in ("reward", "eval_accuracy", "kl", "entropy", "response_length", "clip_fraction", "grad_norm",
                 "phase_times", "sft_loss", "throughput"):
        png = out / "report" / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
        assert f"({plot}.png)" in report
