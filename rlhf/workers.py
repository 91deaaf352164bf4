"""Ray actor shells around the role engines. They hold the models; the driver holds none."""

from __future__ import annotations

import importlib
import os
import socket

import ray
import torch

from rollout.bridge import Bucket, pack_buckets


def load_object(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


class TrainerWorker:
    """One rank of a trainer worker group: a torch.distributed process running a training engine."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.engine = None

    def free_address(self) -> tuple[str, int]:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def init(self, address: tuple[str, int], engine_spec: str, model_path: str, engine_cfg, trainable: bool,
             head: str) -> None:
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",  # Ray gives each GPU worker exactly one visible device
            MASTER_ADDR=address[0],
            MASTER_PORT=str(address[1]),
        )
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.engine = load_object(engine_spec)(model_path, engine_cfg, trainable, head)

    def configure_optimizer(self, cfg) -> None:
        self.engine.configure_optimizer(cfg)

    def logprobs(self, batch):
        return self.engine.logprobs(batch)

    def values(self, batch):
        return self.engine.values(batch)

    def train_step(self, batch, loss_fn, normaliser: float):
        return self.engine.train_step(batch, loss_fn, normaliser)

    def export_buckets(self, bucket_bytes: int) -> list[ray.ObjectRef]:
        """Collective; rank 0 returns references to the packed weights in Ray's object store."""
        return [ray.put(b) for b in pack_buckets(self.engine.export_weights(), bucket_bytes)]

    def save(self, path: str) -> None:
        self.engine.save(path)

    def save_state(self, path: str) -> None:
        self.engine.save_state(path)

    def load_state(self, path: str) -> None:
        self.engine.load_state(path)


class RolloutWorker:
    """A rollout engine in its own process."""

    def __init__(self, engine_spec: str, model_path: str, cfg):
        self.engine = load_object(engine_spec)(model_path, cfg)

    def generate(self, prompt_ids, sampling):
        return self.engine.generate(prompt_ids, sampling)

    def update_weights(self, bucket_refs: list[ray.ObjectRef]) -> int:
        buckets: list[Bucket] = ray.get(bucket_refs)
        return self.engine.update_weights(buckets)
