"""Where the role processes go (`rollout.placement`, `rollout.tensor_parallel_size`) and which
weight transport `auto` picks, checked against layouts written out by hand; and the layouts
refused before Ray starts. `trainer.ray_address` skips the check against this machine's GPUs."""

import pytest
import torch

from rlhf.config import ConfigError, load_config
from rlhf.config.layout import gpu_layout
from weight_sync import choose_transport

CLUSTER = ["trainer.ray_address=auto"]


@pytest.mark.parametrize("overrides, trainer, rollout, shares, transport", [
    (["actor.world_size=2", "actor.num_gpus_per_worker=0.5", "rollout.num_engines=2", "rollout.num_gpus=0.5"],
     [0, 1], [[0], [1]], {0: 1.0, 1: 1.0}, "cuda_ipc"),
    (["rollout.placement=disaggregated", "actor.world_size=2", "actor.num_gpus_per_worker=1", "rollout.num_engines=2",
      "rollout.num_gpus=1"],
     [0, 1], [[2], [3]], {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}, "nccl"),
    (["rollout.placement=disaggregated", "actor.world_size=1", "actor.num_gpus_per_worker=1",
      "rollout.tensor_parallel_size=2", "rollout.num_gpus=0.8"],
     [0], [[1, 2]], {0: 1.0, 1: 0.8, 2: 0.8}, "nccl"),
    (["actor.world_size=2", "actor.num_gpus_per_worker=0.5", "rollout.tensor_parallel_size=2", "rollout.num_gpus=0.25"],
     [0, 1], [[0, 1]], {0: 0.75, 1: 0.75}, "cuda_ipc"),
])
def test_gpu_layouts(overrides, trainer, rollout, shares, transport):
    cfg = load_config(CLUSTER + overrides)
    layout = gpu_layout(cfg)
    assert layout.trainer == {"actor": trainer}
    assert layout.rollout == rollout
    assert layout.shares == pytest.approx(shares)
    assert choose_transport("auto", True, cfg.rollout.placement) == transport


def test_without_gpus_nothing_is_pinned_and_weights_go_through_the_object_store():
    for placement in ("colocated", "disaggregated"):
        cfg = load_config([f"rollout.placement={placement}"])
        layout = gpu_layout(cfg)
        assert (layout.trainer, layout.rollout, layout.shares) == ({}, [], {})
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
