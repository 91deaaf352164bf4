"""The report (`python -m rlhf.report DIR`) on a run that never finished: rows written by hand, no summary.json."""

import dataclasses
import json

from rlhf.config import load_config
from rlhf.metrics import read_metrics
from rlhf.report import main, summary_table


def test_report_of_an_unfinished_run_names_its_status_config_and_plots(tmp_path):
    cfg = load_config(["rl.steps=5", "algo.kl_coef=0.1"])
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    rows = [{"stage": "sft", "step": 0, "eval/accuracy": 0.0}, {"stage": "sft", "step": 1, "sft/loss": 3.0},
            {"stage": "sft", "step": 2, "sft/loss": 2.0}, {"stage": "sft", "step": 2, "eval/accuracy": 0.5}]
    for step in (1, 2):
        rows.append({"stage": "rl", "step": step, "reward/mean": 0.5 + 0.1 * step, "reward/std": 0.1,
                     "actor/kl_ref": 0.01, "time/rollout": 1.0, "time/reward": 0.25, "time/train": 2.0,
                     "time/push": 0.5, "time/step": 4.0})
    rows.append({"stage": "rl", "step": 2, "time/checkpoint": 0.75})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Status: **not finished**" in report
    assert "SFT steps logged: 2; RL steps logged: 2." in report
    assert "| reward/mean | 0.6 | 0.7 | 0.65 |" in report
    assert "`rl.steps=5` (default `60`)" in report and "`algo.kl_coef=0.1` (default `0.0`)" in report
    made = sorted(p.stem for p in (tmp_path / "report").glob("*.png"))
    assert made == ["eval_accuracy", "kl", "phase_times", "reward", "sft_loss"]


def test_report_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_report_names_every_stage_of_a_run_with_repeated_stages(tmp_path):
    """stages=[sft,rl,rl]: the stages are sft, rl and rl2, each reported and plotted."""
    rows = [{"stage": "sft", "step": 0, "eval/accuracy": 0.0}, {"stage": "sft", "step": 1, "sft/loss": 3.0},
            {"stage": "sft", "step": 1, "eval/accuracy": 0.25}]
    for stage, base in (("rl", 0.25), ("rl2", 0.75)):
        for step in (1, 2, 3):
            rows.append({"stage": stage, "step": step, "reward/mean": base + 0.05 * step, "reward/std": 0.1,
                         "actor/grad_norm": 1.0, "time/rollout": 1.0, "time/train": 2.0, "time/step": 3.5})
        rows.append({"stage": stage, "step": 3, "eval/accuracy": base + 0.2})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Steps logged: sft (SFT) 1; rl (RL) 3; rl2 (RL) 3." in report
    assert "| reward/mean | 0.3 | 0.4 | 0.35 |" in report  # rl
    assert "| rl2 metric | first step | last step | mean |" in report
    assert "| reward/mean | 0.8 | 0.9 | 0.85 |" in report  # rl2
    assert "| rl2 step 3 | 0.95 |" in report
    made = sorted(p.stem for p in (tmp_path / "report").glob("*.png"))
    assert made == ["eval_accuracy", "grad_norm", "phase_times", "reward", "sft_loss"]
    table = summary_table(read_metrics(tmp_path))
    assert [line.split()[:2] for line in table.splitlines() if line.startswith(("sft", "rl"))] == [
        ["sft", "1"], ["rl", "3"], ["rl2", "3"]]
