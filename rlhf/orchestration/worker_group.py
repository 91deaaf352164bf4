"""A group of Ray actors forming one torch.distributed world, addressed as a whole."""

from __future__ import annotations

import time

import ray
from tensordict import TensorDict

from core.batch import split
from rlhf.orchestration.starting import wait_for
from rlhf.orchestration.workers import TrainerWorker


class TrainerGroup:
    def __init__(self, world_size: int, engine_spec: str, model_path: str, engine_cfg, trainable: bool,
                 num_cpus: float, num_gpus: float, name: str, head: str = "lm", options: list[dict] | None = None):
        """`options`: extra Ray actor options per rank (e.g. where to run it)."""
        cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(TrainerWorker)
        self.world_size = world_size
        options = options or [{}] * world_size
        began = time.time()
        self.workers = [cls.options(name=f"{name}-{r}", **options[r]).remote(r, world_size) for r in range(world_size)]
        ranks = [f"{name} rank {r}" for r in range(world_size)]
        # Rank 0's node and a free port there is the rendezvous; ranks may sit on any node.
        address = wait_for({ranks[0]: self.workers[0].free_address.remote()}, began)[ranks[0]]
        got = wait_for({rank: w.init.remote(address, engine_spec, model_path, engine_cfg, trainable, head)
                        for rank, w in zip(ranks, self.workers)}, began)
        layouts = [got[rank] for rank in ranks]
        # Ranks that share a data-parallel rank (a tensor- or expert-parallel group) get the same
        # rows; one of them answers for the group.
        self.dp_size = layouts[0][1]
        self.dp_ranks = [dp_rank for dp_rank, _ in layouts]
        self.answering = [self.dp_ranks.index(d) for d in range(self.dp_size)]

    def all(self, method: str, *args):
        """Call `method` with the same arguments on every rank; return the results in rank order."""
        return ray.get([getattr(w, method).remote(*args) for w in self.workers])

    def dp(self, method: str, batch: TensorDict, *args):
        """Split `batch` evenly across data-parallel ranks and call `method` on each rank with its
        shard; return one result per data-parallel rank, in order."""
        shards = split(batch, self.dp_size)
        results = ray.get([getattr(w, method).remote(shards[d], *args) for w, d in zip(self.workers, self.dp_ranks)])
        return [results[r] for r in self.answering]

    def per_dp(self, method: str, *args):
        """Call `method` on every rank; return one result per data-parallel rank, in order."""
        results = self.all(method, *args)
        return [results[r] for r in self.answering]

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
