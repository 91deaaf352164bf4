"""The controller's sampling logic with a fake rollout engine (a Ray actor returning scripted
responses): DAPO's dynamic sampling keeps only groups whose rewards differ, refilling them."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch

from rewards.manager import RewardManager, RewardSpec
from core.batch import pack
from rlhf.config import load_config
from rlhf.orchestration.controller import Controller
from rlhf.data.render import Renderer
from rlhf.data.rows import Row
from rlhf.data.sampler import Sampler
from rlhf.orchestration.roles import Roles
from rollout.group import RolloutGroup


class FakeTokenizer:
    """Characters as token ids (eos = 0)."""

    eos_token_id = pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return type("Enc", (), {"input_ids": [ord(c) for c in text]})()

    def batch_decode(self, seqs, skip_special_tokens=True):
        return ["".join(chr(t) for t in s if t != 0) for s in seqs]


class ScriptedRollout:
    """For "a+b=": all n samples right when a is even (no signal), else half right."""

    def timing(self):
        return {}

    def generated(self):
        """The group's word after each generation: nothing is cached here."""

    def generate(self, prompt_ids, sampling):
        prompts, responses, groups = [], [], []
        for g, ids in enumerate(prompt_ids):
            text = "".join(map(chr, ids))
            a, b = map(int, text[:-1].split("+"))
            right, wrong = str(a + b), str(a + b + 1)
            for k in range(sampling.n):
                answer = right if a % 2 == 0 or k % 2 == 0 else wrong
                prompts.append(list(ids))
                responses.append([ord(c) for c in answer] + [0])
                groups.append(g)
        batch = pack(prompts, responses, 0)
        batch["rollout_logprobs"] = torch.zeros(batch["input_ids"].shape)
        batch["group_ids"] = torch.tensor(groups)
        batch["truncated"] = torch.zeros(len(groups), dtype=torch.bool)
        batch["rollout_versions"] = torch.zeros(batch["input_ids"].shape, dtype=torch.long)
        return batch


@pytest.fixture(scope="module")
def ray_local(ray_cluster):
    # the workers import this module (for the fake actor class) from the tests folder
    ray.init(address=ray_cluster, runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}})
    yield
    ray.shutdown()


@pytest.mark.parametrize("dynamic, rounds", [(True, 8), (False, 1)])
def test_dynamic_sampling_keeps_groups_with_signal(ray_local, dynamic, rounds):
    cfg = load_config(["algo=dapo", "rl.prompts_per_step=8", "rl.n=4", f"algo.dynamic_sampling={dynamic}",
                       f"algo.max_sampling_rounds={rounds}"])
    rewards = RewardManager([RewardSpec("exact_match")], fallback=0.0, timeout_s=10, num_workers=1, max_error_rate=0)
    try:
        rollout = ray.remote(ScriptedRollout).remote()
        tok = FakeTokenizer()
        ctl = Controller(cfg, Roles(actor=None, rollout=RolloutGroup([rollout], 0)), tok, rewards, Renderer(tok, True, None))
        problems = [Row(f"{a}+1=", str(a + 1), str(a + 1)) for a in range(40)]
        ctl.sampler = Sampler(problems, seed=0)
        got = ctl._collect(ctl._draw(), 0)
        batch, errors, used = got.batch, got.errors, got.rounds
    finally:
        rewards.close()
    assert batch.batch_size[0] == 8 * 4 and errors == {}
    groups = batch["group_ids"].view(8, 4)
    assert (groups == groups[:, :1]).all() and groups[:, 0].unique().numel() == 8
    has_signal = batch["scores"].view(8, 4).std(-1) > 0
    if dynamic:  # half the prompts have signal: refill rounds find 8 such groups
        assert has_signal.all() and used > 1
    else:
        assert not has_signal.all() and used == 1


def test_skipped_updates_are_counted_and_stop_the_run_after_the_limit():
    engines = SimpleNamespace(restarts=0)  # the rollout group's restart count travels in the state too
    ctl = Controller(load_config(["trainer.max_consecutive_skips=3"]), Roles(actor=None, rollout=engines),
                     FakeTokenizer(), rewards=None, renderer=None)
    ok, bad = {"actor/skipped_step": 0.0}, {"actor/skipped_step": 1.0}
    assert ctl.count_skips([bad, bad]) == 2 and not ctl.skip_limit_reached()
    assert ctl.count_skips([ok]) == 0 and ctl.skipped_in_a_row == 0  # a good update resets the run of skips
    assert ctl.count_skips([bad, {"actor/skipped_step": 0.0, "critic/skipped_step": 1.0}]) == 2
    assert not ctl.skip_limit_reached()
    ctl.count_skips([bad])
    assert ctl.skip_limit_reached() and (ctl.skipped, ctl.skipped_in_a_row) == (5, 3)
    state = ctl.state_dict()
    fresh = Controller(load_config(["trainer.max_consecutive_skips=0"]), Roles(actor=None, rollout=SimpleNamespace()),
                       FakeTokenizer(), rewards=None, renderer=None)
    fresh.load_state_dict(state)
    assert (fresh.skipped, fresh.skipped_in_a_row) == (5, 3) and not fresh.skip_limit_reached()  # 0: never stop


def test_reward_functions_get_the_rows_extra_columns(ray_local):
    cfg = load_config(["rl.prompts_per_step=4", "rl.n=2"])
    rewards = RewardManager([RewardSpec(str(Path(__file__).parent / "reward_plugins.py:by_extra"), 1.0, {"bonus": 0.5})],
                            fallback=-9.0, timeout_s=10, num_workers=1, max_error_rate=0)
    try:
        tok = FakeTokenizer()
        ctl = Controller(cfg, Roles(actor=None, rollout=RolloutGroup([ray.remote(ScriptedRollout).remote()], 0)), tok, rewards,
                         Renderer(tok, True, None))
        rows = [Row(f"{a}+1=", str(a + 1), extra={"parity": "odd" if a % 2 else "even"}) for a in range(4)]
        ctl.sampler = Sampler(rows, seed=0)
        got = ctl._collect(ctl._draw(), 0)
        batch, errors = got.batch, got.errors
    finally:
        rewards.close()
    assert errors == {}
    # each sample's reward is its own prompt's column, plus the kwarg: 1.5 for odd a, 0.5 for even
    for ids, score in zip(batch["input_ids"].tolist(), batch["scores"].tolist()):
        a = int("".join(map(chr, ids)).split("+")[0])
        assert score == (1.5 if a % 2 else 0.5)


class FailingRollout(ScriptedRollout):
    """Scripted, but its `fail_on`-th generation raises (0: never)."""

    def __init__(self, fail_on: int):
        self.calls, self.fail_on = 0, fail_on

    def generate(self, prompt_ids, sampling):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("engine fell over")
        return super().generate(prompt_ids, sampling)


class RecordingActor:
    """A one-rank trainer group that trains on nothing and records what the controller asks of it."""

    world_size = 1

    def __init__(self):
        self.calls, self.shape = [], None

    def dp(self, method, batch, *args):
        self.calls.append(method)
        self.shape = batch["input_ids"].shape
        return [{"loss": 0.0, "actor/skipped_step": 0.0}] if method == "train_step" else [torch.zeros(self.shape)]

    def per_dp(self, method):
        return [torch.zeros(self.shape)]  # the training forward's log-probs

    def all(self, method, *args):
        self.calls.append(method)
        return {"device_stats": [{"device": "cpu"}], "sync_weights": [(8, [])]}[method]


@pytest.mark.parametrize("prefetch_fails", [False, True])
def test_a_failed_prefetch_skips_the_push_and_the_next_step_raises_it(ray_local, prefetch_fails):
    """rl.off_policy_steps=1: the push waits for the next step's generation; if that generation
    failed, pushing could hang on a dead engine, so the step ends without a push (time/push 0, the
    version unchanged) and the next step raises the generation's error."""
    cfg = load_config(["rl.prompts_per_step=4", "rl.n=2", "rl.off_policy_steps=1", "rl.steps=3"])
    rewards = RewardManager([RewardSpec("exact_match")], fallback=0.0, timeout_s=10, num_workers=1, max_error_rate=0)
    try:
        tok, actor = FakeTokenizer(), RecordingActor()
        engine = ray.remote(FailingRollout).remote(2 if prefetch_fails else 0)
        ctl = Controller(cfg, Roles(actor=actor, rollout=RolloutGroup([engine], 0)), tok, rewards,
                         Renderer(tok, True, None))
        sampler = Sampler([Row(f"{a}+1=", str(a + 1)) for a in range(12)], seed=0)
        first = ctl.rl_step(sampler, more=1)  # generates step 1, starts step 2's generation (the last step)
        assert actor.calls.count("train_step") == 1
        if prefetch_fails:
            assert "sync_weights" not in actor.calls and first["time/push"] == 0.0 and ctl.version == 0
            with pytest.raises(RuntimeError, match="engine fell over"):
                ctl.rl_step(sampler, more=0)
            assert actor.calls.count("train_step") == 1  # nothing trained on a batch that does not exist
        else:
            assert actor.calls.count("sync_weights") == 1 and ctl.version == 1
            second = ctl.rl_step(sampler, more=0)  # trains on the batch generated ahead, sampled before the first push
            assert second["rollout/policy_lag"] == 1.0 and ray.get(engine.__ray_call__.remote(lambda e: e.calls)) == 2
    finally:
        rewards.close()


class RecordingEngines:
    """The rollout group as the push sees it: records the calls made to every engine."""

    restarts = 0

    def __init__(self, calls: list, fail: bool = False):
        self.calls, self.fail = calls, fail

    def all(self, method: str, *args):
        self.calls.append(method)
        if self.fail:
            from rollout.group import RolloutFailed

            raise RolloutFailed("engine 0 kept dying")
        return [None]


def _pushing(overrides: list[str], calls: list, fail: bool = False) -> Controller:
    """A controller whose queue holds one batch still generating, and whose push is recorded."""
    import threading

    from rlhf.orchestration.rollout_queue import RolloutQueue

    cfg = load_config(["task.name=arithmetic_tools", "rl.off_policy_steps=1", *overrides])
    ctl = Controller(cfg, Roles(actor=None, rollout=RecordingEngines(calls, fail)), FakeTokenizer(), rewards=None,
                     renderer=None)
    never = threading.Event()
    ctl.rollouts = RolloutQueue(1, ctl.rollouts.crossing, lambda: None, lambda *a: never.wait(), dict, lambda p: None,
                                relaunchable=False)
    ctl.rollouts.launch(0)
    ctl.sync_weights = lambda: calls.append("push") or {"time/push": 0.0}
    return ctl


def test_a_multi_turn_push_holds_the_engines_before_the_trainers_send():
    """Multi-turn batches ahead do not hold the push; the engines are asked to let their turns in
    flight finish first (timed as the rollout wait), and a failure there counts as after the update."""
    calls = []
    timing = _pushing([], calls)._push(train_actor=True, more=0)
    assert calls == ["hold_for_push", "push"] and "time/rollout_wait" in timing

    calls = []  # partial rollouts: the push's first payload stops the engines at once, no hold first
    _pushing(["rl.partial_rollouts=true"], calls)._push(train_actor=True, more=0)
    assert calls == ["push"]

    calls = []  # no update (critic pre-training): no push, no hold
    _pushing([], calls)._push(train_actor=False, more=0)
    assert calls == []

    from rollout.group import RolloutFailed

    with pytest.raises(RolloutFailed) as failed:
        _pushing([], [], fail=True)._push(train_actor=True, more=0)
    assert failed.value.after_update  # the trainer updated: a resumed run pushes first
