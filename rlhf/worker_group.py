"""A group of Ray actors forming one torch.distributed world, addressed as a whole."""

from __future__ import annotations

import ray
from tensordict import TensorDict

from rlhf.batch import split
from rlhf.workers import TrainerWorker


class TrainerGroup:
    def __init__(self, world_size: int, engine_spec: str, model_path: str, engine_cfg, trainable: bool,
                 num_cpus: float, num_gpus: float, name: str, head: str = "lm"):
        cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(TrainerWorker)
        self.world_size = world_size
        self.workers = [cls.options(name=f"{name}-{r}").remote(r, world_size) for r in range(world_size)]
        # Rank 0's node and a free port there is the rendezvous; ranks may sit on any node.
        address = ray.get(self.workers[0].free_address.remote())
        ray.get([w.init.remote(address, engine_spec, model_path, engine_cfg, trainable, head) for w in self.workers])

    def all(self, method: str, *args):
        """Call `method` with the same arguments on every rank; return the results in rank order."""
        return ray.get([getattr(w, method).remote(*args) for w in self.workers])

    def dp(self, method: str, batch: TensorDict, *args):
        """Split `batch` evenly across ranks (data parallel) and call `method` on each shard."""
        shards = split(batch, self.world_size)
        return ray.get([getattr(w, method).remote(s, *args) for w, s in zip(self.workers, shards)])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
