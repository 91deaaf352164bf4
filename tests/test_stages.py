"""The stage sequence: names, per-stage overrides checked by the schema, and which finished
stages a restart may reuse."""

import dataclasses
import json

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.config.stages import plan
from rlhf.output.finished_stages import finished, mark_finished


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


def _finish(out, stages):
    for i, s in enumerate(stages):
        s.checkpoint(out).mkdir(parents=True)
        mark_finished(s, out, stages[:i], {"summary": {}})


@pytest.mark.parametrize("overrides", [
    ["rollout.max_num_batched_tokens=512"],
    ["rollout.max_num_seqs=8", "rollout.num_engines=2", "rollout.bucket_bytes=1000", "rollout.generate_timeout_s=60",
     "rollout.num_cpus=0.5", "rollout.kv_cache_bytes=1000000", "rollout.weight_transport=object_store"],
    ["actor.micro_batch_size=16", "actor.max_tokens_per_micro_batch=512", "actor.packing=true", "actor.num_cpus_per_worker=0.5"],
    ["eval.max_new_tokens=4", "eval.pass_k=2", "trainer.save_every=5", "trainer.loggers=[]"],
])
def test_a_result_neutral_change_reuses_every_finished_stage(tmp_path, overrides):
    """Speed, placement and reporting settings do not change what a stage trains (eval.max_new_tokens
    below rl.max_new_tokens leaves the prompt limit as it was)."""
    _finish(tmp_path, plan(load_config(["stages=[sft,rl]"])))
    again = plan(load_config(["stages=[sft,rl]", *overrides]))
    assert finished(again[0], tmp_path, []) is not None
    assert finished(again[1], tmp_path, again[:1]) is not None


def test_an_sft_stage_ignores_what_only_its_evaluation_and_later_stages_use(tmp_path):
    _finish(tmp_path, plan(load_config(["stages=[sft,rl]"]))[:1])
    again = plan(load_config(["stages=[sft,rl]", "rollout.dtype=bfloat16", "rollout.seed_per_prompt=false", "rl.lr=1.0e-4",
                              "algo.kl_coef=0.1", "reward.fn=math_answer"]))
    assert finished(again[0], tmp_path, []) is not None


def test_a_change_that_matters_is_refused_naming_each_key_with_both_values(tmp_path):
    _finish(tmp_path, plan(load_config(["stages=[sft,rl]"])))
    again = plan(load_config(["stages=[sft,rl]", "sft.lr=1.0e-4", "sft.batch_size=64", "rollout.max_num_batched_tokens=512"]))
    with pytest.raises(ConfigError) as e:
        finished(again[0], tmp_path, [])
    message = str(e.value)
    assert "checkpoints/sft is a finished sft stage" in message
    assert "sft.lr: saved 0.003, now 0.0001" in message and "sft.batch_size: saved 128, now 64" in message
    assert "max_num_batched_tokens" not in message  # neutral: not listed among the differences
    again = plan(load_config(["stages=[sft,rl]", "rollout.dtype=bfloat16"]))
    assert finished(again[0], tmp_path, []) is not None
    with pytest.raises(ConfigError, match=r"rollout.dtype: saved 'float32', now 'bfloat16'"):
        finished(again[1], tmp_path, again[:1])


def test_the_prompt_limit_counts_through_the_keys_that_set_it(tmp_path):
    """With data.max_prompt_tokens=null the limit is rollout.max_model_len (64) minus the longest
    generation (6): shorter generations raise it to 60, which would keep other rows."""
    _finish(tmp_path, plan(load_config(["stages=[sft,rl]"]))[:1])
    again = plan(load_config(["stages=[sft,rl]", "rl.max_new_tokens=4", "eval.max_new_tokens=4"]))
    with pytest.raises(ConfigError) as e:
        finished(again[0], tmp_path, [])
    assert "data.max_prompt_tokens, or if null rollout.max_model_len - max(rl.max_new_tokens, eval.max_new_tokens)): " \
           "saved 58, now 60" in str(e.value)
    assert "data.max_prompt_tokens=58 keeps the saved prompt limit" in str(e.value)
    again = plan(load_config(["stages=[sft,rl]", "rl.max_new_tokens=4", "eval.max_new_tokens=4", "data.max_prompt_tokens=58"]))
    assert finished(again[0], tmp_path, []) is not None


def test_a_stage_run_after_other_stages_is_not_reused_without_them(tmp_path):
    _finish(tmp_path, plan(load_config(["stages=[sft,rl]"])))
    alone = plan(load_config(["stages=[rl]"]))
    with pytest.raises(ConfigError, match=r"stages before it: saved \['sft'\], now \[\]"):
        finished(alone[0], tmp_path, [])


def test_a_record_of_the_earlier_format_is_read(tmp_path):
    """stage.json as written before settings were recorded flat: the config's sections less those
    the kind does not use, the earlier stages' under "after"."""
    cfg = load_config(["stages=[sft,rl]"])
    stages = plan(cfg)

    def nested(stage, before):
        d = dataclasses.asdict(stage.cfg)
        for k in ("trainer", "eval", "stages", "stage_overrides", *{"sft": ("rl", "algo", "critic", "reward"), "rl": ("sft",)}[stage.kind]):
            d.pop(k)
        d["after"] = [nested(s, before[:i]) for i, s in enumerate(before)]
        return d

    for i, s in enumerate(stages):
        s.checkpoint(tmp_path).mkdir(parents=True)
        (s.checkpoint(tmp_path) / "stage.json").write_text(json.dumps({"stage": s.name, "config": nested(s, stages[:i]), "summary": {}}))
    again = plan(load_config(["stages=[sft,rl]", "rollout.max_num_batched_tokens=512"]))
    assert finished(again[0], tmp_path, []) is not None and finished(again[1], tmp_path, again[:1]) is not None
    again = plan(load_config(["stages=[sft,rl]", "rl.lr=1.0e-4"]))
    with pytest.raises(ConfigError, match=r"rl.lr: saved 0.0005, now 0.0001"):
        finished(again[1], tmp_path, again[:1])
