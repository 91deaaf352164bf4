"""Ray actors standing in for rollout engines and a trainer in tests of the driver's recovery
from dead engines (tests/test_rollout_recovery.py). Each actor's process imports this module,
so it imports Ray only: such an actor starts in about a second, one importing torch in ten."""

import os

import ray


@ray.remote(num_cpus=0)
class WeightsEngine:
    """A rollout engine whose weights are a version number, set by FakeTrainer's push."""

    version = None

    def pid(self) -> int:
        return os.getpid()

    def load(self, version: int) -> None:
        self.version = version

    def loaded(self):
        return self.version

    def timing(self) -> dict:
        return {"time/generate": 0.0}


@ray.remote(num_cpus=0)
class FakeTrainer:
    """A trainer group of one rank: an update bumps its version, a push loads it into every engine."""

    def __init__(self):
        self.version, self.engines = 0, []

    def connect_rollout(self, engines) -> None:
        self.engines = list(engines)

    def step(self) -> None:
        self.version += 1

    def sync_weights(self):
        ray.get([e.load.remote(self.version) for e in self.engines])
        return 8, []
