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


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "dapo", "gspo", "ppo"])
def test_every_algorithm_composes(algo):
    cfg = load_config([f"algo={algo}"])
    assert cfg.algo.name == algo
    assert cfg.algo.uses_critic == (algo == "ppo")


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
        (["algo.loss_agg=token_mean"], ["algo.loss_agg", "token-mean"]),
        (["algo.adv_estimator=gea"], ["algo.adv_estimator", "gae"]),
        (["algo.kl_mode=reward", "algo.kl_coef=0.1"], ["algo.kl_mode=reward", "reinforce_pp"]),
        (["algo.dual_clip=0.5"], ["algo.dual_clip"]),
        (["algo=ppo", "algo.mini_batches=3"], ["algo.mini_batches=3"]),
        (["reward.on_error=ignore"], ["reward.on_error", "fallback"]),
        (["algo.critic_pretrain_steps=2"], ["algo.critic_pretrain_steps", "gae"]),
        (["algo=ppo", "rl.steps=10"], ["algo.critic_pretrain_steps", "rl.steps=10"]),
        (["reward.fns=[{name: arithmetic, weight: 1.0, kwargs: {}}]"], ["reward.fn", "reward.fns"]),
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
