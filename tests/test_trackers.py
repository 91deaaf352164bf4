"""Tracker selection is checked with the config, before Ray starts (the trackers' output is
checked end to end in test_main_e2e.py)."""

import pytest

from rlhf.output import trackers
from rlhf.config import ConfigError
from rlhf.orchestration.preflight import load_run


def test_an_unknown_tracker_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'; choose from console, tensorboard"):
        load_run(["trainer.loggers=[console,tensorbord]"])


def test_a_tracker_whose_package_is_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(trackers.NEEDS, "mlflow", "a_package_that_is_not_installed")
    with pytest.raises(ConfigError, match=r"not installed; install it with `pip install 'rlhf\[mlflow\]'`"):
        load_run(["trainer.loggers=[console,mlflow]"])


def test_console_prints_a_step_line_every_log_every_and_each_evaluation(capsys):
    console = trackers.Console(log_every=2, label="grpo")
    for step in (1, 2):
        console.log("rl", step, {"reward/mean": 0.25 * step, "time/train": 0.5, "time/step": 1.5})
    console.log("sft", 10, {"eval/accuracy": 0.5, "eval/reward": 0.5})
    assert capsys.readouterr().out.splitlines() == [
        "[grpo 2] mean=0.5 train=0.5 step=1.5",
        "[eval sft step 10] accuracy=0.500 reward=0.500",
    ]
