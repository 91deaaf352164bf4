"""Which GPU each role process takes, by `rollout.placement` (see rlhf/orchestration/placement.py):
a pure function of the config, so config checks see a crowded or missing GPU before anything starts."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from rlhf.config.schema import trainer_groups


@dataclass
class Layout:
    """GPU indices of the role processes that ask for GPUs, and the GPUs of work on each index."""

    trainer: dict[str, list[int]]  # trainer group name -> the GPU index of each rank
    rollout: list[list[int]]  # the GPU indices of each rollout engine (one per tensor-parallel rank)
    shares: dict[int, float]

    def shared_with_rollout(self, role: str) -> list[int]:
        """The GPUs where a rank of `role` and a vLLM worker sit together."""
        return sorted(set(self.trainer.get(role, [])) & {i for gpus in self.rollout for i in gpus})


def gpu_layout(cfg) -> Layout:
    """The layout `cfg` asks for (a `RunConfig`)."""
    groups = {name: g for name, g in trainer_groups(cfg).items() if g.num_gpus_per_worker > 0}
    r = cfg.rollout
    trainer = {name: list(range(g.world_size)) for name, g in groups.items()}
    first = max((g.world_size for g in groups.values()), default=0) if r.placement == "disaggregated" else 0
    tp = r.tensor_parallel_size
    rollout = [[first + e * tp + k for k in range(tp)] for e in range(r.num_engines)] if r.num_gpus > 0 else []
    shares: dict[int, float] = defaultdict(float)
    for name, ranks in trainer.items():
        for i in ranks:
            shares[i] += groups[name].num_gpus_per_worker
    for gpus in rollout:
        for i in gpus:
            shares[i] += r.num_gpus
    return Layout(trainer, rollout, dict(shares))


def describe(layout: Layout) -> str:
    """Where the layout puts each role, in words (for errors)."""
    parts = [f"{name} ranks on GPUs {ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else f"{name} on GPU {ranks[0]}"
             for name, ranks in layout.trainer.items()]
    gpus = [i for engine in layout.rollout for i in engine]
    if gpus:
        parts.append(f"vLLM on GPUs {gpus[0]}-{gpus[-1]}" if len(gpus) > 1 else f"vLLM on GPU {gpus[0]}")
    return ", ".join(parts)
