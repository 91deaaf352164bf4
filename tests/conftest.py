"""Test-wide setup: keep every cache and temp file in a work folder, and share one tiny model."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("RLHF_TEST_WORK", ROOT / ".work" / "test"))
for var, sub in [("TMPDIR", "tmp"), ("RAY_TMPDIR", "ray"), ("VLLM_CACHE_ROOT", "vllm"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")]:
    os.environ.setdefault(var, str(WORK / sub))
    Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL_CACHE = ROOT / ".cache" / "rlhf" / "models"


def pytest_collection_modifyitems(config, items):
    import torch

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
def sft_policy():
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
                                   f"trainer.output_dir={folder / 'sft200'}"], capture_output=True, text=True,
                                  timeout=900, cwd=ROOT)
            assert proc.returncode == 0, proc.stderr[-4000:]
    return policy
