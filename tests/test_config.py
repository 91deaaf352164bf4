"""Config validation: bad input fails before anything heavy, naming the key and a fix."""

import subprocess
import sys
import time

import pytest

from rlhf.config import ConfigError, load_config


def test_defaults_compose_and_are_typed():
    cfg = load_config([])
    assert cfg.algo.name == "grpo" and cfg.actor.engine == "automodel"
    assert isinstance(cfg.rl.lr, float) and isinstance(cfg.actor.world_size, int)


def test_overrides_apply():
    cfg = load_config(["sft.steps=7", "rl.steps=3", "trainer.output_dir=/tmp/x", "algo=grpo", "actor.engine=automodel"])
    assert (cfg.sft.steps, cfg.rl.steps, cfg.trainer.output_dir) == (7, 3, "/tmp/x")


@pytest.mark.parametrize(
    "override, must_name",
    [
        (["trainer.outptu_dir=x"], ["trainer.outptu_dir", "trainer.output_dir"]),
        (["rl.stepz=3"], ["rl.stepz", "rl.steps"]),
        (["algo=grpoo"], ["grpoo", "grpo"]),
        (["actor.engine=automodl"], ["automodl", "automodel"]),
        (["rl.steps=many"], ["rl.steps", "integer"]),
        (["sft.batch_size=3"], ["sft.batch_size", "actor.world_size"]),
        (["reward.fn=exact_mach"], ["exact_mach", "exact_match"]),
        (["reward.fn=no_such_module_xyz:f"], ["no_such_module_xyz"]),
        (["model.path=/nonexistent/model"], ["model.path", "config.json"]),
        (["+new.key=1"], ["+new.key"]),
        (["rl.steps"], ["key=value"]),
    ],
)
def test_bad_overrides_name_the_problem(override, must_name):
    with pytest.raises(ConfigError) as e:
        load_config(override)
    for word in must_name:
        assert word in str(e.value)


def test_cli_fails_fast_before_ray(tmp_path):
    t = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.main", "rl.stpes=3", f"trainer.output_dir={tmp_path}/out"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "rl.stpes" in proc.stderr and "rl.steps" in proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr and not (tmp_path / "out").exists()
    assert time.time() - t < 60
