"""State folders on disk: atomic save, completion marker, keep_last, resume=auto's choice of state
and the rewinding of metrics.jsonl. The trainer groups are stand-ins that write files (the real
save is covered end to end in test_ppo_resume_e2e.py)."""

import json
from pathlib import Path

import pytest

from rlhf.output import run_state
from rlhf.config import ConfigError, load_config


class FileGroup:
    """Writes a shard file per rank, as a trainer group's save_state does."""

    def all(self, method, path):
        assert method == "save_state"
        Path(path).mkdir(parents=True)
        for rank in range(2):
            (Path(path) / f"rank{rank}.bin").write_bytes(bytes(range(256)) * 16)


def _cfg(out, *extra):
    return load_config([f"trainer.output_dir={out}", "trainer.save_every=1", *extra])


def _save(cfg, out, step, start):
    return run_state.save(out, "rl", step, cfg, {"actor": FileGroup()}, {"start_path": str(start), "summary": {}})


@pytest.fixture
def start(tmp_path):
    (tmp_path / "start").mkdir()
    (tmp_path / "start" / "config.json").write_text("{}")
    return tmp_path / "start"


def test_save_writes_a_marker_listing_every_file_and_keeps_the_last_k(tmp_path, start):
    out = tmp_path / "run"
    cfg = _cfg(out, "trainer.keep_last=2")
    for step in (1, 2, 3):
        path = _save(cfg, out, step, start)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["state-rl-step2", "state-rl-step3"]
    marker = json.loads((path / "COMPLETE").read_text())
    assert marker["files"] == {"actor/rank0.bin": 4096, "actor/rank1.bin": 4096,
                               "driver.json": (path / "driver.json").stat().st_size}
    assert json.loads((path / "driver.json").read_text())["step"] == 3


def test_auto_skips_a_truncated_state_for_the_previous_complete_one(tmp_path, start, capsys):
    out = tmp_path / "run"
    cfg = _cfg(out, "trainer.keep_last=0")
    for step in (1, 2, 3):
        _save(cfg, out, step, start)
    shard = out / "checkpoints" / "state-rl-step3" / "actor" / "rank1.bin"
    shard.write_bytes(shard.read_bytes()[:1000])  # a disk that filled up, a copy cut short
    (out / "checkpoints" / "state-rl-step4").mkdir()  # a save killed before its marker
    state = run_state.check(_cfg(out, "trainer.resume=auto"))
    assert state["step"] == 2 and state["path"] == str(out / "checkpoints" / "state-rl-step2")
    err = capsys.readouterr().err
    assert "skipping" in err and "state-rl-step4: no COMPLETE marker" in err
    assert "actor/rank1.bin has 1000 bytes, 4096 were written" in err
    # named explicitly, the broken state is refused with the reason
    with pytest.raises(ConfigError, match="not a complete state: actor/rank1.bin has 1000 bytes"):
        run_state.check(_cfg(out, f"trainer.resume={out / 'checkpoints' / 'state-rl-step3'}"))


def test_auto_with_no_state_starts_afresh_and_a_different_config_is_refused(tmp_path, start):
    out = tmp_path / "run"
    assert run_state.check(_cfg(out, "trainer.resume=auto")) is None
    _save(_cfg(out), out, 1, start)
    with pytest.raises(ConfigError, match="rl.n: saved 8, now 4"):
        run_state.check(_cfg(out, "trainer.resume=auto", "rl.n=4"))
    # rl.steps may grow with constant LR schedules (the default), not with a decaying one
    assert run_state.check(_cfg(out, "trainer.resume=auto", "rl.steps=100"))["step"] == 1
    with pytest.raises(ConfigError, match="rl.steps: saved 60, now 100"):
        run_state.check(_cfg(out, "trainer.resume=auto", "rl.steps=100", "rl.lr_schedule=cosine"))


def test_a_state_from_before_a_new_key_resumes_when_the_key_is_at_its_default(tmp_path, start):
    out = tmp_path / "run"
    path = _save(_cfg(out), out, 1, start)
    driver = path / "driver.json"
    state = json.loads(driver.read_text())
    del state["config"]["sft"]["eval_fraction"]  # as written by a version without the key
    driver.write_text(json.dumps(state))
    marker = json.loads((path / run_state.MARKER).read_text())
    marker["files"]["driver.json"] = driver.stat().st_size
    (path / run_state.MARKER).write_text(json.dumps(marker))
    assert run_state.check(_cfg(out, "trainer.resume=auto"))["step"] == 1
    with pytest.raises(ConfigError, match="sft.eval_fraction: saved None, now 0.25"):
        run_state.check(_cfg(out, "trainer.resume=auto", "sft.eval_fraction=0.25"))


def test_resume_drops_the_rows_written_after_the_state(tmp_path, start):
    out = tmp_path / "run"
    _save(_cfg(out), out, 2, start)
    rows = [{"stage": "sft", "step": 0, "eval/accuracy": 0.1}, {"stage": "sft", "step": 1, "sft/loss": 2.0},
            {"stage": "rl", "step": 1, "reward/mean": 0.1}, {"stage": "rl", "step": 2, "reward/mean": 0.2},
            {"stage": "rl", "step": 3, "reward/mean": 0.3}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"stage": "rl", "st'  # cut short by the kill
    (out / "metrics.jsonl").write_text(text)
    state = run_state.check(_cfg(out, "trainer.resume=auto"))
    assert (out / "metrics.jsonl").read_text() == text  # checking reads only
    run_state.rewind_metrics(out, "rl", state["step"], [])
    kept = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert kept == rows[:4]


def test_auto_orders_states_by_stage_then_step_and_rewinds_later_stages(tmp_path, start):
    out = tmp_path / "run"
    cfg = _cfg(out, "stages=[sft,rl,rl]", "trainer.keep_last=3")
    for stage, step in (("rl", 4), ("rl", 5), ("rl2", 1), ("rl2", 2)):
        run_state.save(out, stage, step, cfg, {"actor": FileGroup()}, {"stage": stage, "start_path": str(start),
                                                                       "summary": {}})
    # keep_last counts over stages: rl step 4 is the oldest of the four
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "state-rl-step5", "state-rl2-step1", "state-rl2-step2"]
    # rl2 comes after rl in the plan, so its step 2 is newer than rl's step 5
    state = run_state.check(_cfg(out, "stages=[sft,rl,rl]", "trainer.resume=auto"))
    assert state["path"] == str(out / "checkpoints" / "state-rl2-step2")
    rows = [{"stage": "rl", "step": 5, "reward/mean": 0.1}, {"stage": "rl", "step": 6, "reward/mean": 0.2},
            {"stage": "rl2", "step": 1, "reward/mean": 0.3}, {"stage": "rl3", "step": 1, "reward/mean": 0.4}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_state.rewind_metrics(out, "rl", 5, ["rl2", "rl3"])  # resuming rl at step 5: rl's step 6 and rl2, rl3 go
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == rows[:1]


def test_resuming_mid_sft_keeps_the_sft_rows_up_to_the_state_and_drops_the_rest(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    rows = [{"stage": "sft", "step": 0, "eval/accuracy": 0.1}, {"stage": "sft", "step": 1, "sft/loss": 2.0},
            {"stage": "sft", "step": 2, "sft/loss": 1.9}, {"stage": "sft", "step": 2, "time/checkpoint": 0.5},
            {"stage": "sft", "step": 3, "sft/loss": 1.8}, {"stage": "rl", "step": 1, "reward/mean": 0.1}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_state.rewind_metrics(out, "sft", 2, ["rl"])
    assert [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] == rows[:3]


def test_rollout_restarts_carry_over_a_resume(tmp_path, start):
    """`rollout/restarts_total` counts over the whole run: engines replaced before a state was saved
    are still counted by the run resumed from it (the controller's counters travel in driver.json)."""
    from rlhf.orchestration.controller import Controller
    from rlhf.orchestration.roles import Roles
    from rollout.group import RolloutGroup

    out = tmp_path / "run"
    cfg = _cfg(out)
    tok = type("Tokenizer", (), {"eos_token_id": 0, "pad_token_id": 0})()

    def controller():
        return Controller(cfg, Roles(actor=None, rollout=RolloutGroup([], pad_id=0)), tok, None, None)

    before = controller()
    before.roles.rollout.restarts = 2  # two engines replaced up to RL step 3
    run_state.save(out, "rl", 3, cfg, {"actor": FileGroup()},
                   {"start_path": str(start), "summary": {}, "controller": before.state_dict()})
    resumed = controller()
    assert resumed.roles.rollout.restarts == 0
    resumed.load_state_dict(run_state.check(_cfg(out, "trainer.resume=auto"))["controller"])
    assert resumed.roles.rollout.restarts == 2
    resumed.roles.rollout.restarts += 1  # an engine replaced after the resume
    assert resumed.state_dict()["rollout_restarts"] == 3


def test_a_state_resumes_at_another_parallel_layout_but_not_with_other_settings(tmp_path, start):
    """Layouts the engines reshard a state onto may change on resume (the engine-level resharding is
    checked in test_reshard_resume.py); what changes the computation is still refused."""
    out = tmp_path / "run"
    _save(_cfg(out), out, 1, start)  # the defaults: actor.world_size=2, tp_size=1, one vLLM engine
    for layout in (["actor.world_size=1"], ["actor.world_size=4", "rollout.num_engines=2"],
                   ["actor.tp_size=2"], ["critic.world_size=1", "ref.world_size=4", "ref.tp_size=2"]):
        assert run_state.check(_cfg(out, "trainer.resume=auto", *layout))["step"] == 1, layout
    with pytest.raises(ConfigError, match="actor.dtype: saved 'float32', now 'bfloat16'"):
        run_state.check(_cfg(out, "trainer.resume=auto", "actor.world_size=1", "actor.dtype=bfloat16"))
    with pytest.raises(ConfigError, match="actor.ep_size: saved 1, now 2"):
        run_state.check(_cfg(out, "trainer.resume=auto", "actor.ep_size=2"))
    with pytest.raises(ConfigError, match="seed: saved 0, now 7"):
        run_state.check(_cfg(out, "trainer.resume=auto", "actor.world_size=1", "seed=7"))
    # Without per-prompt seeds each engine's generator draws its share: the engine count changes the samples.
    _save(_cfg(out, "rollout.seed_per_prompt=false"), out, 2, start)
    with pytest.raises(ConfigError, match="rollout.num_engines: saved 1, now 2"):
        run_state.check(_cfg(out, "trainer.resume=auto", "rollout.seed_per_prompt=false", "rollout.num_engines=2"))
    assert run_state.check(_cfg(out, "trainer.resume=auto", "rollout.seed_per_prompt=false", "actor.world_size=1"))
