"""Where the role processes run, by `rollout.placement`:

- colocated: GPU i holds rank i of every trainer group and rollout engine i, each with its share
  of the GPU (the rollout engines take turns with the trainer on the same memory);
- disaggregated: the trainer ranks on GPUs 0..W-1 (W: the largest trainer world size; rank i of
  every trainer group on GPU i), the rollout engines on the GPUs after them, so generation and
  training never share a GPU and weights travel between GPUs (NCCL).

A Ray placement group reserves one whole GPU per index, so shares that fit on one GPU are not
spread over two. Without GPUs there is nothing to pin: roles go where Ray puts them (any node).

Which GPU each role process takes is the config's alone (rlhf/config/layout.py, checked before
anything starts); this module reserves them in a Ray placement group.
"""

from __future__ import annotations

from collections import defaultdict


class Placement:
    def __init__(self, slots: list[tuple[int, float, dict]], rollout: list[list[int]] | None = None):
        """`slots`: one (index, cpus, custom resources) per role process that needs a GPU; index =
        its GPU. `rollout`: the GPU indices of each rollout engine."""
        bundles: dict[int, dict] = defaultdict(lambda: {"GPU": 1, "CPU": 0.0})
        for index, cpus, resources in slots:
            bundles[index]["CPU"] += cpus
            for key, amount in resources.items():
                bundles[index][key] = bundles[index].get(key, 0) + amount
        self.size = max(bundles) + 1 if bundles else 0
        self.rollout = rollout or []
        self.group = None
        if self.size:
            import ray
            from ray.util.placement_group import placement_group

            # a GPU's bundle with no CPU (a tensor-parallel worker alone on it) leaves the key out
            self.group = placement_group([{k: v for k, v in bundles[i].items() if v} for i in range(self.size)],
                                         strategy="PACK")
            ray.get(self.group.ready(), timeout=300)

    def options(self, index: int) -> dict:
        """Ray actor options that put a process on GPU `index` (empty without GPUs)."""
        if self.group is None:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index)}

    def rollout_bundles(self, engine: int) -> tuple[int, ...]:
        """The bundles of a tensor-parallel engine's GPUs, where vLLM's Ray executor starts one
        worker each (`VLLMConfig.ray_bundles`); empty for an engine that is one process."""
        gpus = self.rollout[engine] if self.rollout else []
        return tuple(gpus) if len(gpus) > 1 else ()

    def rollout_options(self, engine: int, num_gpus: float) -> dict:
        """Ray actor options for rollout engine `engine` (empty when the engines take no GPU). A
        tensor-parallel engine's own process takes no GPU: its workers, started by vLLM in this
        placement group (captured), take a `num_gpus` share of one GPU each."""
        if not self.rollout:
            return {}
        gpus = self.rollout[engine]
        if len(gpus) == 1:
            return {**self.options(gpus[0]), "num_gpus": num_gpus}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=gpus[0],
                                                    placement_group_capture_child_tasks=True)
        return {"scheduling_strategy": strategy, "num_gpus": 0}

    def remove(self) -> None:
        if self.group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.group)
