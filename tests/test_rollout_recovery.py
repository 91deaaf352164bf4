"""RolloutGroup's recovery from a dead or hung engine, on real Ray actors around a fake engine
(tests/test_faults_e2e.py does it with vLLM and the trainer)."""

import os
import signal
import time

import pytest
import ray
import torch
from tensordict import TensorDict

from fake_roles import FakeTrainer, WeightsEngine
from rollout.base import Sampling
from rollout.group import RolloutFailed, RolloutGroup


@ray.remote(num_cpus=0)
class FakeEngine:
    """Answers each prompt with `seed + prompt index` as its one response token; `delay` s per call."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def pid(self) -> int:
        return os.getpid()

    def generate(self, prompt_ids, sampling):
        time.sleep(self.delay)
        n = len(prompt_ids)
        return TensorDict({"input_ids": torch.tensor([[p[0], sampling.seed + i] for i, p in enumerate(prompt_ids)]),
                           "group_ids": torch.arange(n)}, batch_size=[n])

    def timing(self):
        return {"time/generate": self.delay}

    def generated(self):
        """The group's word after each generation: nothing is cached here."""


class OneRankGroup:
    """A trainer group's `all` (TrainerGroup), over one FakeTrainer."""

    def __init__(self, trainer):
        self.trainer = trainer

    def all(self, method, *args):
        return [ray.get(getattr(self.trainer, method).remote(*args))]


@pytest.fixture(scope="module")
def local_ray(ray_cluster):
    ray.init(address=ray_cluster)
    yield
    ray.shutdown()


def _ready(engine):
    ray.get(engine.__ray_ready__.remote())
    return engine


def _group(engines, restarts, **kw):
    def restart(failed, workers):
        for i in failed:
            assert workers[i] is engines[i]  # the failed engine is handed over in its place
            restarts.append(i)
            workers[i] = _ready(FakeEngine.remote())

    return RolloutGroup(engines, pad_id=0, restart=restart, **kw)


PROMPTS = [[10], [11], [12], [13]]
SAMPLING = Sampling(n=1, temperature=1.0, max_new_tokens=1, seed=100)


def test_a_dead_engine_is_replaced_and_its_share_generated_with_the_same_seeds(local_ray):
    engines = [_ready(FakeEngine.remote()), _ready(FakeEngine.remote())]
    restarts = []
    group = _group(list(engines), restarts, timeout_s=30, max_restarts=2)
    os.kill(ray.get(engines[1].pid.remote()), signal.SIGKILL)
    batch = group.generate(PROMPTS, SAMPLING)
    assert restarts == [1] and group.restarts == 1 and group.workers[1] is not engines[1]
    # prompt i got seed 100 + i, whichever engine answered it
    assert batch["input_ids"].tolist() == [[10, 100], [11, 101], [12, 102], [13, 103]]
    assert batch["group_ids"].tolist() == [0, 1, 2, 3]
    assert group.timing["time/rollout_recovery"] > 0
    group.generate(PROMPTS, SAMPLING)  # a call without failures costs no recovery time
    assert group.restarts == 1 and group.timing["time/rollout_recovery"] == 0.0


def test_a_hung_engine_is_killed_after_the_timeout_and_replaced(local_ray):
    hung = _ready(FakeEngine.remote(delay=3600))
    restarts = []
    group = _group([hung], restarts, timeout_s=1.0, max_restarts=1)
    t = time.time()
    batch = group.generate(PROMPTS, SAMPLING)
    assert time.time() - t < 600 and restarts == [0]  # not waiting out the hung call
    assert batch["input_ids"][:, 1].tolist() == [100, 101, 102, 103]
    with pytest.raises(ray.exceptions.RayActorError):  # the hung one is gone, not left running
        ray.get(hung.pid.remote(), timeout=30)


def test_a_generation_beside_the_trainer_kills_a_failed_engine_instead_of_replacing_it(local_ray):
    engines = [_ready(FakeEngine.remote()), _ready(FakeEngine.remote())]
    restarts = []
    group = _group(list(engines), restarts, timeout_s=30, max_restarts=2)
    os.kill(ray.get(engines[1].pid.remote()), signal.SIGKILL)
    with pytest.raises(RolloutFailed, match="rl.off_policy_steps >= 1"):
        group.generate(PROMPTS, SAMPLING, restart=False)
    assert restarts == [] and group.restarts == 0  # no fresh engine with the trainer's newer weights
    batch = group.generate(PROMPTS, SAMPLING)  # the next call with restarts replaces it
    assert restarts == [1] and batch["input_ids"].tolist() == [[10, 100], [11, 101], [12, 102], [13, 103]]


def test_failures_beyond_max_restarts_stop_with_a_clear_error(local_ray):
    restarts = []

    def restart(failed, workers):
        restarts.extend(failed)
        for i in failed:
            workers[i] = _ready(FakeEngine.remote(delay=3600))  # hangs again

    group = RolloutGroup([_ready(FakeEngine.remote(delay=3600))], pad_id=0, restart=restart, timeout_s=0.5, max_restarts=1)
    with pytest.raises(RolloutFailed) as e:
        group.generate(PROMPTS, SAMPLING)
    assert restarts == [0]
    assert "2 time(s) in a row" in str(e.value) and "rollout.max_restarts=1" in str(e.value)
    assert "rollout.generate_timeout_s=0.5" in str(e.value)


def test_an_error_inside_a_live_engine_is_not_a_fault_to_restart(local_ray):
    restarts = []
    group = _group([_ready(FakeEngine.remote())], restarts, timeout_s=30, max_restarts=3)
    with pytest.raises(ray.exceptions.RayTaskError):
        group.generate(PROMPTS, Sampling(n=1, temperature=1.0, max_new_tokens=1, seed=None))  # None + i: TypeError
    assert restarts == []


def _kill(engine):
    os.kill(ray.get(engine.pid.remote()), signal.SIGKILL)


def test_an_engine_found_dead_outside_a_generation_is_replaced_and_called_again(local_ray):
    engines = [_ready(WeightsEngine.remote()), _ready(WeightsEngine.remote())]
    restarts = []

    def restart(failed, workers):
        restarts.extend(failed)
        for i in failed:
            workers[i] = _ready(WeightsEngine.remote())

    group = RolloutGroup(list(engines), pad_id=0, restart=restart, timeout_s=30, max_restarts=2)
    _kill(engines[1])
    assert group.all("timing") == [{"time/generate": 0.0}] * 2  # the fresh engine answered in its place
    assert restarts == [1] and group.restarts == 1 and group.workers[1] is not engines[1]


def _roles(engines, on_restart=lambda attempt, workers: None):
    """Roles around a FakeTrainer, with start_roles' restart: fresh engines, connected, then one push."""
    from rlhf.orchestration.roles import Roles  # here: FakeEngine's processes import this module and need none of it

    trainer = FakeTrainer.remote()
    attempts = []

    def restart(failed, workers):
        attempts.append(list(failed))
        for i in failed:
            workers[i] = _ready(WeightsEngine.remote())
        on_restart(len(attempts), workers)
        ray.get(trainer.connect_rollout.remote(workers))
        roles.push()

    roles = Roles(actor=OneRankGroup(trainer), rollout=RolloutGroup(engines, 0, restart, timeout_s=30, max_restarts=2))
    ray.get(trainer.connect_rollout.remote(engines))
    return roles, trainer, attempts


def test_an_engine_that_dies_before_a_push_is_replaced_and_given_the_current_weights(local_ray):
    engines = [_ready(WeightsEngine.remote()), _ready(WeightsEngine.remote())]
    roles, trainer, attempts = _roles(list(engines))
    roles.sync_weights()
    ray.get(trainer.step.remote())  # the trainer moves on; engine 1 dies before the push
    _kill(engines[1])
    assert roles.sync_weights() == 8
    assert attempts == [[1]] and roles.rollout.restarts == 1
    assert ray.get([w.loaded.remote() for w in roles.rollout.workers]) == [1, 1]


def test_an_engine_that_dies_while_others_are_replaced_is_replaced_too(local_ray):
    engines = [_ready(WeightsEngine.remote()), _ready(WeightsEngine.remote())]

    def kill_engine_0_once(attempt, workers):
        if attempt == 1:
            _kill(workers[0])

    roles, trainer, attempts = _roles(list(engines), kill_engine_0_once)
    _kill(engines[1])
    roles.sync_weights()
    assert attempts == [[1], [0]] and roles.rollout.restarts == 2
    assert ray.get([w.loaded.remote() for w in roles.rollout.workers]) == [0, 0]


def test_a_push_failing_for_another_reason_is_not_an_engine_fault(local_ray):
    engines = [_ready(WeightsEngine.remote())]
    roles, trainer, attempts = _roles(list(engines))
    ray.get(trainer.connect_rollout.remote([engines[0], "not an engine"]))
    with pytest.raises(ray.exceptions.RayTaskError):
        roles.sync_weights()
    assert attempts == [] and roles.rollout.restarts == 0


def test_a_push_with_no_restarts_allowed_stops_with_a_clear_error(local_ray):
    engines = [_ready(WeightsEngine.remote())]
    roles, trainer, attempts = _roles(list(engines))
    roles.rollout.max_restarts = 0
    _kill(engines[0])
    with pytest.raises(RolloutFailed, match=r"engine\(s\) 0 \(died .*during a weight push.*rollout.max_restarts=0"):
        roles.sync_weights()
    assert attempts == []
