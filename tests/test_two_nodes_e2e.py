"""Trainer and rollout on two Ray nodes: a local cluster of two raylets on this machine, one
offering the custom resource `trainer_node`, the other `rollout_node`. A short job pinned by
`actor.resources` / `rollout.resources` must finish, each role on its own node, and after every
weight push vLLM (on the other node) must score the samples as the trainer does."""

import os
import subprocess
import sys

import pytest
import ray
from ray.cluster_utils import Cluster

from rlhf.output.metrics import read_metrics, rl_steps
from rlhf.orchestration.ray_auth import keep_token_local

pytestmark = pytest.mark.e2e


def test_trainer_and_rollout_on_two_nodes(tmp_path):
    environ = dict(os.environ)  # Ray records the cluster in it (RAY_ADDRESS): later tests here must not join it
    keep_token_local()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"trainer_node": 2},
                                                              "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, resources={"rollout_node": 1})
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        proc = subprocess.run(
            [sys.executable, "-m", "rlhf.main", f"trainer.ray_address={cluster.address}",
             "actor.resources={trainer_node: 1}", "rollout.resources={rollout_node: 1}",
             "sft.steps=20", "rl.steps=2", "rl.prompts_per_step=8", "rl.n=4", "task.num_eval=16",
             f"trainer.output_dir={out}"],
            capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-6000:]
        steps = rl_steps(read_metrics(out))
        assert sorted(steps) == [1, 2]
        # step 2 samples with the weights pushed after step 1's update (float32 on both sides)
        assert all(r["rollout/logprob_abs_diff_max"] < 1e-5 for r in steps.values()), steps

        ray.init(address=cluster.address)
        by_resource = {key: n["NodeID"] for n in ray.nodes() for key in n["Resources"] if key.endswith("_node")}
        ran = {a["Name"]: a["Address"]["NodeID"] for a in ray._private.state.actors().values() if a["Name"]}
        assert ran["rollout-0"] == by_resource["rollout_node"]
        assert ran["actor-0"] == ran["actor-1"] == by_resource["trainer_node"] != by_resource["rollout_node"]
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(environ)
