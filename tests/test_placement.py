"""Where the role processes go (`rollout.placement`, `rollout.tensor_parallel_size`) and which
weight transport `auto` picks, checked against layouts written out by hand; and the layouts
refused before Ray starts. `trainer.ray_address` skips the check against this machine's GPUs."""

import os
from pathlib import Path

import pytest
import torch

from rlhf.config import ConfigError, compose_config, load_config
from rlhf.config.layout import gpu_layout
from rlhf.orchestration.placement import role_demands, unplaceable
from weight_sync import choose_transport

CLUSTER = ["trainer.ray_address=auto"]


# `shared`: the GPUs where the actor and vLLM sit together (the engines then start before the actor)
@pytest.mark.parametrize("overrides, trainer, rollout, shares, transport, shared", [
    (["actor.world_size=2", "actor.num_gpus_per_worker=0.5", "rollout.num_engines=2", "rollout.num_gpus=0.5"],
     [0, 1], [[0], [1]], {0: 1.0, 1: 1.0}, "cuda_ipc", [0, 1]),
    (["rollout.placement=disaggregated", "actor.world_size=2", "actor.num_gpus_per_worker=1", "rollout.num_engines=2",
      "rollout.num_gpus=1"],
     [0, 1], [[2], [3]], {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}, "nccl", []),
    (["rollout.placement=disaggregated", "actor.world_size=1", "actor.num_gpus_per_worker=1",
      "rollout.tensor_parallel_size=2", "rollout.num_gpus=0.8"],
     [0], [[1, 2]], {0: 1.0, 1: 0.8, 2: 0.8}, "nccl", []),
    (["actor.world_size=2", "actor.num_gpus_per_worker=0.5", "rollout.tensor_parallel_size=2", "rollout.num_gpus=0.25"],
     [0, 1], [[0, 1]], {0: 0.75, 1: 0.75}, "cuda_ipc", [0, 1]),
    (["actor.world_size=1", "actor.num_gpus_per_worker=0.5", "rollout.num_gpus=0.5"],
     [0], [[0]], {0: 1.0}, "cuda_ipc", [0]),
])
def test_gpu_layouts(overrides, trainer, rollout, shares, transport, shared):
    cfg = load_config(CLUSTER + overrides)
    layout = gpu_layout(cfg)
    assert layout.trainer == {"actor": trainer}
    assert layout.rollout == rollout
    assert layout.shares == pytest.approx(shares)
    assert choose_transport("auto", True, cfg.rollout.placement) == transport
    assert layout.shared_with_rollout("actor") == shared


def test_without_gpus_nothing_is_pinned_and_weights_go_through_the_object_store():
    for placement in ("colocated", "disaggregated"):
        cfg = load_config([f"rollout.placement={placement}"])
        layout = gpu_layout(cfg)
        assert (layout.trainer, layout.rollout, layout.shares) == ({}, [], {})
        assert layout.shared_with_rollout("actor") == []  # roles start together
        assert choose_transport("auto", False, placement) == "object_store"


@pytest.mark.parametrize("overrides, message", [
    (CLUSTER + ["actor.world_size=1", "actor.num_gpus_per_worker=0.5", "rollout.tensor_parallel_size=2",
                "rollout.num_gpus=0.5"], "GPU 1 would hold a vLLM worker but no actor rank"),
    (CLUSTER + ["actor.num_gpus_per_worker=0.5", "rollout.num_gpus=0.5", "rollout.weight_transport=nccl"],
     "rollout.placement=disaggregated"),
    (CLUSTER + ["actor.num_gpus_per_worker=1", "rollout.num_gpus=1", "rollout.placement=disaggregated",
                "rollout.weight_transport=cuda_ipc"], "cuda_ipc cannot reach engines"),
    (CLUSTER + ["rollout.num_gpus=1.5"], "rollout.num_gpus=1.5"),
    (CLUSTER + ["actor.num_gpus_per_worker=1", "rollout.num_gpus=1", "rollout.placement=disaggregated",
                "rollout.sleep=true"], "none share them"),
    (CLUSTER + ["rollout.placement=split"], "rollout.placement='split' is not one of"),
    pytest.param(["actor.world_size=2", "actor.num_gpus_per_worker=1", "rollout.num_gpus=1",
                  "rollout.placement=disaggregated"],
                 r"needs 3 GPUs for these roles \(actor ranks on GPUs 0-1, vLLM on GPU 2\) but this machine has \d+",
                 marks=pytest.mark.skipif(torch.cuda.device_count() >= 3, reason="this machine has the GPUs")),
])
def test_layouts_refused_before_start(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


# What each role process asks of Ray, written out by hand: (role, processes, CPUs each).
DEFAULT_ROLES = [("the rollout engines", 1, 1.0), ("trainer role 'actor'", 2, 1.0)]


@pytest.mark.parametrize("overrides, roles", [
    ([], DEFAULT_ROLES),
    (["rollout.num_engines=2"], [("the rollout engines", 2, 1.0), ("trainer role 'actor'", 2, 1.0)]),
    (["algo.kl_coef=0.05", "actor.num_cpus_per_worker=0.5"],
     [("the rollout engines", 1, 1.0), ("trainer role 'actor'", 2, 0.5), ("trainer role 'ref'", 2, 0.5)]),
    (["algo=ppo", "rollout.num_cpus=2"],
     [("the rollout engines", 1, 2.0), ("trainer role 'actor'", 2, 1.0), ("trainer role 'critic'", 2, 1.0)]),
    # a later stage's reference lives beside the actor too
    (["stages=[sft,rl,rl]", "stage_overrides.rl2.algo.kl_coef=0.1"], DEFAULT_ROLES + [("trainer role 'ref'", 2, 1.0)]),
])
def test_role_demands_list_every_process_in_start_order(overrides, roles):
    demands = role_demands(load_config(overrides))
    assert [(d.role, d.processes, d.each["CPU"]) for d in demands] == roles


def test_roles_that_fit_the_cluster_pass():
    assert unplaceable(load_config([]), {"CPU": 3.0}, [{"CPU": 3.0}]) is None
    # two engines and two actor ranks: 4 CPUs, over two nodes of 2
    assert unplaceable(load_config(["rollout.num_engines=2"]), {"CPU": 4.0}, [{"CPU": 2.0}, {"CPU": 2.0}]) is None


def test_a_role_that_cannot_be_placed_is_named_with_what_it_asks_and_what_the_cluster_has():
    # trainer.num_cpus=1: the rollout engine takes the one CPU, the actor's ranks would wait forever (the config
    # checks refuse this for a local cluster already; a cluster joined at run time is checked here)
    problem = unplaceable(compose_config(["trainer.num_cpus=1"]), {"CPU": 1.0}, [{"CPU": 1.0}])
    assert problem.startswith("trainer role 'actor' cannot be placed: 2 process(es) x 1 CPU, beside the 1 CPU of the "
                              "roles started before it, but the Ray cluster has 1 CPU in all")
    assert "raise trainer.num_cpus to 3 or more" in problem
    # the second engine, where the cluster was sized for one
    problem = unplaceable(load_config(["rollout.num_engines=2"]), {"CPU": 3.0}, [{"CPU": 3.0}])
    assert problem.startswith("trainer role 'actor' cannot be placed") and "beside the 2 CPU" in problem
    problem = unplaceable(load_config(["rollout.num_engines=4"]), {"CPU": 3.0}, [{"CPU": 3.0}])
    assert problem.startswith("the rollout engines cannot be placed: 4 process(es) x 1 CPU")
    assert "rollout.num_engines" in problem


def test_a_custom_resource_no_node_offers_and_a_process_larger_than_any_node_are_refused():
    cfg = load_config(CLUSTER + ["rollout.resources={rollout_node: 1}"])
    problem = unplaceable(cfg, {"CPU": 8.0}, [{"CPU": 8.0}])
    assert problem.startswith("the rollout engines cannot be placed: 1 process(es) x 1 CPU, 1 rollout_node")
    assert "has 0 rollout_node in all" in problem and "ray start --resources" in problem
    # 3 CPUs per rank fit the cluster's 8 in all, but no node of 2 holds one rank
    cfg = load_config(CLUSTER + ["actor.num_cpus_per_worker=3", "rollout.num_cpus=0"])
    problem = unplaceable(cfg, {"CPU": 8.0}, [{"CPU": 2.0}] * 4)
    assert problem.startswith("trainer role 'actor' cannot be placed: each of its processes asks for 3 CPU, more than "
                              "any one node of the Ray cluster has (at most 2 CPU)")


def test_a_local_job_starts_its_own_cluster_beside_an_address_left_by_ray_start(tmp_path):
    """`ray start` leaves the head's address in Ray's temp folder, and a bare ray.init() joins it
    (then refusing num_cpus): a job without trainer.ray_address must start its own cluster."""
    import shutil
    import subprocess
    import sys
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="r", dir=os.environ["RAY_TMPDIR"]))  # Ray's socket paths stay short
    (short / "ray").mkdir()
    (short / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # nothing listens there
    code = ("import ray\nfrom rlhf.config import load_config\nfrom rlhf.orchestration.pipeline import _start_ray\n"
            "_start_ray(load_config(['trainer.num_cpus=3']))\nprint('cpus', ray.cluster_resources()['CPU'])\nray.shutdown()")
    env = {**os.environ, "RAY_TMPDIR": str(short)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    shutil.rmtree(short, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cpus 3.0" in proc.stdout


def test_a_role_the_cluster_cannot_hold_fails_at_once_naming_it(tmp_path):
    """trainer.num_cpus=1: the rollout engine would take the one CPU and the actor's ranks would wait
    forever (Ray keeps them pending without a word); the config check refuses it before Ray starts,
    through the entry point."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "rlhf.main", "trainer.num_cpus=1", f"trainer.output_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "trainer.num_cpus=1 gives the local Ray fewer CPUs than the roles ask for (3:" in proc.stderr
    assert "set trainer.num_cpus=3" in proc.stderr
    assert "roles ready" not in proc.stdout
