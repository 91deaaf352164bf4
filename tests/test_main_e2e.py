"""The whole job through the real entry point: Ray, vLLM, the Automodel trainer group, a few steps;
then what the run left for people to read: the console, tracker records, read back with each
tracker's own reader, and the report; and where it wrote. One run serves every test here."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf.orchestration import environment
from rlhf.output.metrics import read_metrics

pytestmark = pytest.mark.e2e

# every tracker that is installed; the tests of the others are skipped, naming the extra
TRACKERS = ["console"] + [t for t in ("tensorboard", "wandb", "mlflow") if importlib.util.find_spec(t)]
# What the libraries write to the system's temporary folder when nothing points them elsewhere.
SYSTEM_TEMP = Path("/tmp")
SYSTEM_TEMP_NAMES = ["ray", "vllm_dist_*", "torchinductor_*", "rlhf-datasets"]


def _written_since(folder: Path, names: list[str], since: float) -> list[str]:
    found = []
    for name in names:
        for top in folder.glob(name):
            for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
                try:
                    if path.lstat().st_mtime >= since:
                        found.append(str(path))
                except OSError:  # removed meanwhile
                    pass
    return found


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model):
    """The job as a user starts it: from a fresh folder, with no TMPDIR, no cache variables and an
    empty HOME, so everything it writes outside the output folder must land in its work folder
    (RLHF_WORK, short enough for Ray's sockets)."""
    root = tmp_path_factory.mktemp("main")
    out, home = root / "run", root / "home"
    home.mkdir()
    work = Path(os.environ.get("RLHF_TEST_WORK", Path(__file__).resolve().parent.parent / ".work" / "test")) / "w"
    shutil.rmtree(work, ignore_errors=True)
    assert environment.ray_socket_fits(work / "ray"), work
    unset = {*environment.PLACES, "TEMP", "TMP", "HF_HOME", "RLHF_TEST_WORK"}
    env = {k: v for k, v in os.environ.items() if k not in unset and not k.startswith("RAY_AUTH")}
    env.update(HOME=str(home), RLHF_WORK=str(work))
    started = time.time() - 1
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.main", "algo=grpo", "actor.engine=automodel", "sft.steps=20", "rl.steps=3",
         "rl.prompts_per_step=8", "algo.kl_coef=0.05", f"trainer.output_dir={out}",
         f"trainer.loggers=[{','.join(TRACKERS)}]", f"model.cache_dir={Path(tiny_model).parent}"],
        capture_output=True, text=True, timeout=900, cwd=root, env=env,
    )
    return out, proc, {"root": root, "home": home, "work": work, "started": started}


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
    out, proc, _ = job
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
    assert "[grpo 3] mean=" in proc.stdout  # the console tracker's step line
    assert "[eval rl step 3] accuracy=" in proc.stdout


def test_main_writes_nothing_outside_its_work_folder_and_output(job):
    out, proc, where = job
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not any(where["home"].iterdir()), sorted(str(p) for p in where["home"].rglob("*"))
    assert sorted(p.name for p in where["root"].iterdir()) == ["home", "run"]
    assert _written_since(SYSTEM_TEMP, SYSTEM_TEMP_NAMES, where["started"]) == []
    work = where["work"]
    assert list((work / "ray" / "ray").glob("session_*")) and (work / "ray" / "ray" / "auth_token").is_file()
    assert list((work / "tmp").glob("vllm_dist_*"))  # vLLM's rendezvous file went to the work folder


def test_console_is_plain_lines_without_third_party_warnings(job):
    """Output to a pipe, as in a log file: the stages' progress as a few plain lines, not a bar's
    redraws, and no library's warnings."""
    _, proc, _ = job
    console = proc.stdout + proc.stderr
    assert "\r" not in console
    progress = [line for line in proc.stdout.splitlines() if line.startswith(("[sft] step", "[grpo] step"))]
    assert progress[-1].startswith("[grpo] step 3/3 (100%)")
    assert any(line.startswith("[sft] step 20/20 (100%)") for line in progress)
    assert len(progress) <= 10 + 3  # SFT: a line per tenth; GRPO: one per step of 3
    assert [line for line in console.splitlines() if "warn" in line.lower()] == []
    # the start-up, phase by phase, each with its seconds
    for phase in ("config", "imports", "model and tokenizer", "Ray", "data", "rollout engine (vllm) ready",
                  "actor (2 ranks, automodel) ready", "roles"):
        assert f"[rlhf] start-up: {phase} " in proc.stdout, phase


@_needs("tensorboard")
def test_tensorboard_events_hold_the_values_of_metrics_jsonl(job):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = job
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

    out, _, _ = job
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
    out, _, _ = job
    (run,) = (out / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb")), sorted(p.name for p in run.iterdir())


def test_report_is_built_at_the_end_with_its_plots(job):
    out, _, _ = job
    report = (out / "report" / "report.md").read_text()
    assert "Status: **finished**" in report
    assert "`rl.steps=3` (default `60`)" in report and "`algo.kl_coef=0.05` (default `0.0`)" in report
    for plot in ("reward", "eval_accuracy", "kl", "entropy", "response_length", "grad_norm", "phase_times", "sft_loss",
                 "throughput"):
        png = out / "report" / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
        assert f"({plot}.png)" in report
    # one on-policy update per batch: nothing is clipped, which the report says instead of a flat line
    clipped = any(r.get("actor/clip_frac") for r in read_metrics(out))
    assert ("(clip_fraction.png)" in report) == clipped and ("PPO clip fraction: not plotted" in report) != clipped
