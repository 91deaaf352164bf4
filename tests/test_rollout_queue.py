"""The queue of batches generated ahead: whether a push waits for the batches in flight, and
what a save holds for them. Generation is a stand-in that blocks until the test lets it finish."""

import threading

import torch
from tensordict import TensorDict

from rlhf.orchestration.rollout_queue import RolloutQueue, Rollouts


def _queue(crossing: bool):
    gate, launched, position = threading.Event(), [], {"pos": 0}

    def draw():
        position["pos"] += 1
        return position["pos"]

    def generate(drawn, version, restart):
        launched.append(drawn)
        if not restart:
            assert gate.wait(30)
        return Rollouts(TensorDict({"x": torch.full((2,), float(drawn))}, batch_size=[2]), {}, {}, 1, {}, version)

    q = RolloutQueue(1, crossing, draw, generate, lambda: dict(position), position.update, relaunchable=True)
    return q, gate


def _in_thread(fn):
    out, done = {}, threading.Event()

    def run():
        out["value"] = fn()
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return out, done


def test_a_push_waits_for_the_batch_in_flight_and_a_save_keeps_its_launch_mark():
    q, gate = _queue(crossing=False)
    q.take(0, more=3)  # generated now; one batch launched ahead, blocked
    _, pushed = _in_thread(q.before_push)
    assert not pushed.wait(0.3)  # still waiting on the batch in flight
    assert q.state_dict() == [{"mark": {"pos": 1}, "version": 0}]  # relaunched from its mark on resume
    gate.set()
    assert pushed.wait(10)


def test_batches_that_may_cross_pushes_do_not_hold_the_push_and_a_save_waits_for_them():
    q, gate = _queue(crossing=True)
    q.take(0, more=3)
    _, pushed = _in_thread(q.before_push)
    assert pushed.wait(5)  # the push goes ahead while the batch generates
    saved, done = _in_thread(q.state_dict)
    assert not done.wait(0.3)  # no mark to relaunch from: the save waits for the batch
    gate.set()
    assert done.wait(10)
    (item,) = saved["value"]
    assert item["ready"]["batch"]["x"].tolist() == [2.0, 2.0]  # the second draw, kept as generated
