"""Ray actor shells around the role engines. They hold the models; the driver holds none.

Each role process imports this module first, so the warning filters (core.quiet) go in before
torch, transformers or vLLM are imported here, and the process notes when its start-up steps
ended (`startup`: what the driver's start-up lines report).
"""

from __future__ import annotations

import time

_CODE = time.time()  # the process is up, Ray's worker included, and runs our code

from core import quiet  # noqa: E402

quiet.install()

import importlib  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402

import ray  # noqa: E402
import torch  # noqa: E402
from torch.distributed.elastic.utils.distributed import get_free_port  # noqa: E402

from weight_sync import TRANSPORTS  # noqa: E402

_IMPORTED = time.time()


def _startup(began: float, **steps: float) -> dict:
    """This process's start-up as consecutive steps (name -> seconds), from when our code first ran in
    it (`code_at`, a wall-clock time) to now (`ready_at`): imports (this module's), arguments (until
    the call that `began` started: Ray unpacking its arguments, which imports the modules they come
    from, or waiting for the call), then `steps`; and the CPU seconds the process used (`cpu`: well
    under the steps' sum when other processes held the cores)."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {"code_at": _CODE, "ready_at": time.time(), "cpu": use.ru_utime + use.ru_stime,
            "steps": {"imports": _IMPORTED - _CODE, "arguments": began - _IMPORTED, **steps}}


def load_object(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


class TrainerWorker:
    """One rank of a trainer worker group: a torch.distributed process running a training engine."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.engine = None

    def free_address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), get_free_port()

    def init(self, address: tuple[str, int], engine_spec: str, model_path: str, engine_cfg, trainable: bool,
             head: str) -> tuple[int, int]:
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",  # Ray gives each GPU worker exactly one visible device
            MASTER_ADDR=address[0],
            MASTER_PORT=str(address[1]),
        )
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        # Micro-batches of varying length fragment the caching allocator; growable segments don't.
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        began = time.time()
        build = load_object(engine_spec)
        loaded = time.time()
        self.engine = build(model_path, engine_cfg, trainable, head)
        self._startup = _startup(began, **{"engine module": loaded - began, "engine": time.time() - loaded})
        return self.engine.dp_rank, self.engine.dp_size

    def startup(self) -> dict:
        return self._startup

    def configure_optimizer(self, cfg) -> None:
        self.engine.configure_optimizer(cfg)

    def logprobs(self, batch):
        return self.engine.logprobs(batch)

    def values(self, batch):
        return self.engine.values(batch)

    def train_step(self, batch, loss_fn, normaliser: float):
        return self.engine.train_step(batch, loss_fn, normaliser)

    def last_logprobs(self):
        return self.engine.last_logprobs()

    def base_logprobs(self, batch):
        return self.engine.base_logprobs(batch)

    def parameter_counts(self) -> dict:
        return self.engine.parameter_counts()

    def connect_rollout(self, transport: str, receivers: list, bucket_bytes: int, dtype: str) -> None:
        """Become a sender of `transport` to the rollout engines `receivers` (Ray actor handles)."""
        names = ray.get(receivers[0].weight_names.remote())
        self.sender = load_object(TRANSPORTS[transport][0])(self.rank, receivers, bucket_bytes, names, getattr(torch, dtype))

    def sync_weights(self) -> tuple[int, list[str]]:
        """Collective: push the current weights into every rollout engine. Returns the bytes sent
        (on rank 0) and the trainer tensors the rollout model has no place for."""
        return self.sender.push(self.engine.export_weights), sorted(self.sender.skipped)

    def offload(self, what: str) -> None:
        self.engine.offload(what)

    def onload(self) -> None:
        self.engine.onload()

    def device_stats(self) -> dict:
        """This rank's accelerator and its peak memory since the last call (then reset)."""
        if not torch.cuda.is_available():
            return {"device": "cpu", "peak_memory_gb": 0.0}
        peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        return {"device": torch.cuda.get_device_name(), "peak_memory_gb": peak}

    def save(self, path: str) -> None:
        self.engine.save(path)

    def save_state(self, path: str) -> None:
        self.engine.save_state(path)

    def load_state(self, path: str) -> None:
        self.engine.load_state(path)


GENERATION = "generation"  # the rollout worker's concurrency group of generation calls
# Generation calls run on threads of their own (the engine's request loop serves them all at
# once): batches generated ahead of training and an evaluation overlap each other and a push
# (rl.off_policy_steps). Every other call runs in order on one thread: a push's payloads must
# arrive in the order they were sent. Pass these to ray.remote for a RolloutWorker actor.
ROLLOUT_ACTOR_OPTIONS = {"concurrency_groups": {GENERATION: 16}}


class RolloutWorker:
    """A rollout engine in its own process, with the receiving end of the weight transport."""

    def __init__(self, engine_spec: str, model_path: str, cfg):
        began = time.time()
        cls = load_object(engine_spec)
        loaded = time.time()
        self.engine = cls(model_path, cfg)
        self.receiver = load_object(TRANSPORTS[cfg.weight_transport][1])(self.engine)
        self.push_spans: list[tuple[float, float]] = []  # wall-clock start and end of each payload call of a push
        # the engine's own steps (e.g. its imports and the engine itself), if it notes them
        steps = getattr(self.engine, "startup", None) or {"engine": time.time() - loaded}
        self._startup = _startup(began, **{"engine module": loaded - began, **steps})

    def startup(self) -> dict:
        return self._startup

    @ray.method(concurrency_group=GENERATION)
    def generate(self, prompt_ids, sampling):
        return self.engine.generate(prompt_ids, sampling)

    @ray.method(concurrency_group=GENERATION)
    def trajectories(self, rows, sampling, agent):
        return self.engine.trajectories(rows, sampling, agent)

    def timing(self) -> dict[str, float]:
        return self.engine.timing

    def generated(self) -> None:
        self.engine.generated()

    def weight_names(self) -> list[str]:
        return self.engine.weight_names

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self, tags: list[str]) -> None:
        self.engine.wake(tags)

    def weight_workers(self) -> int:
        """The processes of this engine that receive weights (its tensor-parallel workers)."""
        return self.engine.num_workers

    def connect_weights(self, info: dict) -> None:
        self.receiver.connect(info)

    def hold_for_push(self) -> None:
        """Before a push of multi-turn generation in flight, while the trainers wait: the engine
        lets the turns being sampled finish and holds new ones (`begin_push`), so the push's own
        calls find it ready."""
        self.engine.begin_push()

    def begin_weight_update(self) -> None:
        self.engine.begin_push()
        self.receiver.begin()
        self.push_spans = []

    def receive_weights(self, payload, begin: bool = False, finish: bool = False) -> int | None:
        """One payload of a push; `begin` / `finish` fold the push's first and last call into it (a
        sender that knows which payload comes first and last saves two round trips a push)."""
        start = time.time()
        if begin:
            self.begin_weight_update()
        self.receiver.receive(payload)
        loaded = self.finish_weight_update() if finish else None
        self.push_spans.append((start, time.time()))
        return loaded

    def finish_weight_update(self) -> int:
        loaded = self.receiver.finish()
        self.engine.weights_updated()
        return loaded
