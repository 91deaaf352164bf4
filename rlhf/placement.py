"""Where the role processes run. Colocated (the only layout so far): GPU i holds trainer rank i of
every trainer group and rollout engine i, each with its share of the GPU; a Ray placement group
reserves one whole GPU per index, so shares that fit on one GPU are not spread over two.

Without GPUs there is nothing to pin: roles go where Ray puts them (any node of the cluster).
"""

from __future__ import annotations

from collections import defaultdict

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy


class Placement:
    def __init__(self, slots: list[tuple[int, float]]):
        """`slots`: one (index, cpus) per role process that needs a GPU; index = its GPU."""
        cpus = defaultdict(float)
        for index, c in slots:
            cpus[index] += c
        self.size = max(cpus) + 1 if cpus else 0
        self.group = None
        if self.size:
            self.group = placement_group([{"GPU": 1, "CPU": cpus[i]} for i in range(self.size)], strategy="PACK")
            ray.get(self.group.ready(), timeout=300)

    def options(self, index: int) -> dict:
        """Ray actor options that put a process on GPU `index` (empty without GPUs)."""
        if self.group is None:
            return {}
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index)}

    def remove(self) -> None:
        if self.group is not None:
            remove_placement_group(self.group)
