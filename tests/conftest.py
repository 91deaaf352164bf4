"""Test-wide setup: keep every cache and temp file in a work folder, and share one tiny model."""

import os
from pathlib import Path

import pytest

from rlhf.orchestration.environment import PLACES
from rlhf.orchestration.ray_auth import keep_token_local

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("RLHF_TEST_WORK", ROOT / ".work" / "test"))
# every place a run keeps caches and temporary files (as rlhf.main sets them): the role processes
# of the shared cluster (ray_cluster) take them from here, not from the job that uses them
for var, sub in PLACES.items():
    os.environ.setdefault(var, str(WORK / sub))
    Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
# Token authentication for every Ray cluster the tests start or join, with the token in the work
# folder: set before Ray is imported anywhere here (it reads the mode once, at import)
keep_token_local()
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL_CACHE = ROOT / ".cache" / "rlhf" / "models"


# Seconds the slowest modules took on the 2-core machine (CI's kind; `--junitxml`, 2026-12-07).
# The two test processes (pytest-xdist, whole modules each; scripts/test.sh) are handed modules in
# collection order, so these go first, longest first, and the many short modules fill in at the
# end: in xdist's own order (most tests first) they came last, and one process ran the longest
# alone for minutes while the other had nothing left. A module missing here only runs later.
SLOW_MODULES = {
    "test_faults_resume_e2e": 206, "test_ppo_resume_e2e": 161, "test_fsdp_engine": 127, "test_main_e2e": 93,
    "test_agents_e2e": 91, "test_data_e2e": 89, "test_roles": 85, "test_faults_e2e": 83, "test_stop_e2e": 73,
    "test_stages_e2e": 67, "test_rollout_recovery": 60, "test_parallel": 58, "test_reward_plugins_e2e": 57,
    "test_reshard_resume": 48, "test_off_policy_e2e": 48, "test_two_nodes_e2e": 38, "test_config": 37,
    "test_lora": 28, "test_controller": 25,
}


def pytest_collection_modifyitems(config, items):
    import torch

    items.sort(key=lambda item: -SLOW_MODULES.get(item.path.stem, 0))  # stable: each module keeps its order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (on a GPU machine: python -m benchmarks gpu-tests)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def task():
    from rlhf.config import load_config
    from rlhf.data.arithmetic import make_splits

    cfg = load_config([])
    return cfg, make_splits(cfg.seed, cfg.task.max_operand, cfg.task.ops, cfg.task.num_eval)


@pytest.fixture(scope="session")
def tiny_model(task):
    from rlhf.data.arithmetic import corpus
    from rlhf.data.tiny_model import ensure_tiny_model

    cfg, (train, held_out) = task
    return ensure_tiny_model(MODEL_CACHE, corpus(train + held_out), cfg.model.arch, cfg.seed)


@pytest.fixture(scope="session")
def tiny_chat_model():
    """The embedded model of the `arithmetic_tools` task: a chat template with tool calls."""
    from rlhf.data import arithmetic_tools
    from rlhf.data.tiny_model import ensure_tiny_model

    train, held_out = arithmetic_tools.make_splits(0, 999, 2000, 64, 0.5, True)
    arch = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 512, "max_position_embeddings": 128}
    return ensure_tiny_model(MODEL_CACHE, arithmetic_tools.corpus(train + held_out), arch, 0, chat=True)


@pytest.fixture(scope="session")
def ray_cluster():
    """The address of a Ray cluster this test process starts once, which end-to-end jobs join
    (`trainer.ray_address=...`) and in-process tests connect to (`ray.init(address=...)`) instead
    of each starting and stopping a cluster of their own: about 5 CPU-seconds a job (a one-rank
    job's start-up is about 30) on the 2-core machine. Jobs whose subject is their own cluster (the output
    contract, a stop or faults that must leave no process behind, placement) still start theirs."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 16, "include_dashboard": False, "object_store_memory": 512 << 20,
        "_system_config": {"prestart_worker_first_driver": False}})
    yield cluster.address
    cluster.shutdown()


@pytest.fixture(scope="module")
def one_rank_world():
    """The environment of a one-rank torch.distributed world, for an engine built in this process."""
    import torch.distributed as dist
    from torch.distributed.elastic.utils.distributed import get_free_port

    port = get_free_port()
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    existed = dist.is_initialized()  # e.g. an in-process vLLM of an earlier test made it: not ours to end
    yield
    if dist.is_initialized() and not existed:
        dist.destroy_process_group()


@pytest.fixture(scope="session")
def sft_policy(ray_cluster):
    """The default task's policy after 200 SFT steps (one trainer rank; a reward in a quarter to a
    half of its groups of 8 samples, so RL has live rewards and gradients), trained once per test run through the real entry point and shared by the test
    processes (a lock; the folder is named by xdist's run id): the tests that need such a policy
    start their RL stage from it (model.path=..., sft.steps=0) instead of each training it again."""
    import fcntl
    import subprocess
    import sys
    import uuid

    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or os.environ.setdefault("RLHF_TEST_RUN", uuid.uuid4().hex)
    folder = WORK / "shared" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    policy = folder / "sft200" / "checkpoints" / "final"
    with open(folder / "sft200.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (policy / "config.json").is_file():
            proc = subprocess.run([sys.executable, "-m", "rlhf.main", "stages=[sft]", "sft.steps=200", "actor.world_size=1",
                                   f"trainer.output_dir={folder / 'sft200'}", f"trainer.ray_address={ray_cluster}"], capture_output=True, text=True,
                                  timeout=900, cwd=ROOT)
            assert proc.returncode == 0, proc.stderr[-4000:]
    return policy
