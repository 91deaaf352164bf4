"""The stage sequence: names, per-stage overrides checked by the schema, and which finished
stages a restart may reuse."""

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.stages import finished, mark_finished, plan


def test_stage_names_and_overrides():
    cfg = load_config(["stages=[sft,rl,rl]", "stage_overrides={rl2: {reward: {fn: math_answer}, rl: {steps: 3}}}",
                       "stage_overrides.rl2.algo.kl_coef=0.05"])
    stages = plan(cfg)
    assert [(s.name, s.kind, s.steps_for(2244)) for s in stages] == [("sft", "sft", 1000), ("rl", "rl", 60), ("rl2", "rl", 3)]
    assert [s.cfg.reward.fn for s in stages] == ["arithmetic", "arithmetic", "math_answer"]
    assert [s.cfg.algo.uses_reference for s in stages] == [False, False, True]


@pytest.mark.parametrize("overrides, must_name", [
    (["stages=[sft,rlx]"], ["stages[1]", "'rlx'"]),
    (["stages=[]"], ["stages is empty"]),
    (["stage_overrides={rl2: {rl: {steps: 3}}}"], ["rl2", "not a stage of this run (sft, rl)"]),
    (["stages=[rl,rl]", "stage_overrides.rl2.actor.world_size=1"], ["stage_overrides.rl2", "actor"]),
    (["stages=[rl,rl]", "stage_overrides.rl2.rl.stepz=1"], ["stage_overrides.rl2", "rl.stepz", "rl.steps"]),
    (["stages=[rl,rl]", "stage_overrides.rl2.algo.adv_estimator=rlooo"], ["stage_overrides.rl2", "rlooo", "rloo"]),
    (["data.max_prompt_tokens=60"], ["data.max_prompt_tokens=60", "rollout.max_model_len=64"]),
    (["data.eval_files=[x.jsonl]"], ["data.eval_files needs data.train_files"]),
])
def test_bad_stage_and_data_settings_fail_early(overrides, must_name):
    with pytest.raises(ConfigError) as e:
        load_config(overrides)
    for s in must_name:
        assert s in str(e.value), (s, str(e.value))


def test_a_finished_stage_is_reused_only_with_the_settings_it_ran_with(tmp_path):
    stages = plan(load_config(["stages=[sft,rl,rl]"]))
    for i, s in enumerate(stages[:2]):
        s.checkpoint(tmp_path).mkdir(parents=True)
        mark_finished(s, tmp_path, stages[:i], {"summary": {f"accuracy_after_{s.name}": 0.5}})
    assert finished(stages[0], tmp_path, [])["summary"] == {"accuracy_after_sft": 0.5}
    assert finished(stages[1], tmp_path, stages[:1]) is not None
    assert finished(stages[2], tmp_path, stages[:2]) is None  # never ran
    # what SFT does not use may change; what the RL stage uses may not, nor what came before it
    other = plan(load_config(["stages=[sft,rl,rl]", "rl.lr=1.0e-4", "eval.pass_k=4", "trainer.log_every=5"]))
    assert finished(other[0], tmp_path, []) is not None
    with pytest.raises(ConfigError, match="checkpoints/rl is a finished rl stage run with other settings"):
        finished(other[1], tmp_path, other[:1])
    other = plan(load_config(["stages=[sft,rl,rl]", "sft.lr=1.0e-4"]))
    with pytest.raises(ConfigError, match="checkpoints/sft is a finished sft stage"):
        finished(other[0], tmp_path, [])
    with pytest.raises(ConfigError, match="checkpoints/rl is a finished rl stage"):  # its start changed
        finished(other[1], tmp_path, other[:1])
