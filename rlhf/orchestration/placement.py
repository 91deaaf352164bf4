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
from dataclasses import dataclass

from rlhf.config.layout import describe, gpu_layout


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


@dataclass
class Demand:
    """A role's processes and the Ray resources each asks for (CPU and custom resources)."""

    role: str  # as errors name it
    keys: str  # the config keys that set what it asks for
    processes: int
    each: dict[str, float]


def role_demands(cfg) -> list[Demand]:
    """Every role process the run starts, in the order they start: the rollout engines, the actor,
    then the reference and the critic if a stage uses them (they run beside the first two)."""
    from rlhf.config.stages import plan

    r = cfg.rollout
    demands = [Demand("the rollout engines", "rollout.num_engines, rollout.num_cpus, rollout.resources", r.num_engines,
                      {"CPU": r.num_cpus, **(r.resources or {})})]
    algos = [stage.cfg.algo for stage in plan(cfg)]
    groups = [("actor", cfg.actor)]
    groups += [("ref", cfg.ref)] * any(a.uses_reference and not cfg.actor.lora.rank for a in algos)
    groups += [("critic", cfg.critic)] * any(a.uses_critic for a in algos)
    for name, g in groups:
        demands.append(Demand(f"trainer role {name!r}", f"{name}.world_size, {name}.num_cpus_per_worker, {name}.resources",
                              g.world_size, {"CPU": g.num_cpus_per_worker, **(g.resources or {})}))
    return demands


def _amounts(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items())


def unplaceable(cfg, cluster: dict[str, float], nodes: list[dict[str, float]]) -> str | None:
    """Why the roles of `cfg` cannot all run on a Ray cluster with these resources in all
    (`ray.cluster_resources()`) and on each live node: the first role, in start order, that
    would wait forever, what it asks for and what the cluster has; None if they fit. Ray itself
    leaves such a process pending without a word (a trainer group then hangs in its rendezvous)."""
    taken: dict[str, float] = {}
    for d in role_demands(cfg):
        each = {k: v for k, v in d.each.items() if v}
        ask = {k: v * d.processes for k, v in each.items()}
        short = [k for k, v in ask.items() if taken.get(k, 0) + v > cluster.get(k, 0) + 1e-9]
        if short:
            before = {k: taken[k] for k in short if taken.get(k)}
            if cfg.trainer.ray_address is None and short == ["CPU"] and cfg.trainer.num_cpus is not None:
                fix = (f"raise trainer.num_cpus to {taken.get('CPU', 0) + ask['CPU']:g} or more (or leave it null: the "
                       f"local cluster is then sized for the roles)")
            elif short == ["CPU"]:
                fix = "add CPUs to the cluster"
            else:
                fix = "start the cluster's nodes with those resources (ray start --resources=...)"
            return (f"{d.role} cannot be placed: {d.processes} process(es) x {_amounts(each)}"
                    + (f", beside the {_amounts(before)} of the roles started before it" if before else "")
                    + f", but the Ray cluster has {_amounts({k: cluster.get(k, 0) for k in short})} in all; lower what "
                    f"the roles ask for ({d.keys}) or {fix}")
        for k, v in ask.items():
            taken[k] = taken.get(k, 0) + v
        if nodes and not any(all(node.get(k, 0) + 1e-9 >= v for k, v in each.items()) for node in nodes):
            largest = {k: max(node.get(k, 0) for node in nodes) for k in each}
            return (f"{d.role} cannot be placed: each of its processes asks for {_amounts(each)}, more than any one "
                    f"node of the Ray cluster has (at most {_amounts(largest)}); lower it ({d.keys}) or add a node "
                    f"that has it")
    layout = gpu_layout(cfg)
    if len(layout.shares) > cluster.get("GPU", 0):
        return (f"the roles on GPUs cannot be placed: they need {len(layout.shares)} GPUs ({describe(layout)}), but "
                f"the Ray cluster has {cluster.get('GPU', 0):g}; lower the world sizes or rollout.num_engines, or add GPUs")
    return None
