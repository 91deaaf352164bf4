"""Third-party messages that tell someone running a job nothing, dropped where they are raised.

Each entry names the library, the message and why it goes; every other message (ours, and any
other library's) still shows. `install()` runs first thing in the driver (`rlhf.main`) and in
every role process (`rlhf.orchestration.workers`, before torch is imported there), so it is in place before
the libraries that raise these are imported.
"""

from __future__ import annotations

import logging
import re
import warnings

# Python warnings: (category, the message's start as a regex, why it is dropped).
WARNINGS = [
    (UserWarning, r"Transformer Engine and Apex are not installed",
     "megatron_fsdp, imported by NeMo Automodel, falls back to its own kernels, which is what a CPU run uses"),
    (UserWarning, r"Slicing a flattened dim from root mesh will be deprecated",
     "torch, about NeMo Automodel's own device-mesh calls: nothing a user can change"),
    (FutureWarning, r"`torch\.distributed\.reduce_op` is deprecated",
     "vLLM's Triton dispatcher touches torch's deprecated alias while it scans modules"),
]

# Log records: (logger that creates them, message regex, why it is dropped).
LOGS = [
    ("torchao", r"Failed to load .*torchao/_C\w*\..*\.so",
     "torchao's CUDA kernels (mxfp8, CUTLASS), which a CPU build of torch cannot load; transformers and vLLM "
     "import torchao, the run never uses it"),
    ("torch.utils._pytree", r".* is an Enum subclass and is now natively supported by torch\.compile",
     "torchao registers its enums the old way when imported"),
    ("torch._library.triton", r"Triton not available",
     "Triton is left out of the CPU install on purpose (scripts/overrides.txt)"),
    ("vllm.engine.arg_utils", r"The global random seed is set to",
     "the in-process engine is seeded on purpose; its process runs nothing else"),
    ("vllm.config.vllm", r"Enforce eager set|Inductor compilation was disabled by user settings",
     "eager mode is the engine's setting on CPU (rollout.enforce_eager)"),
    ("vllm.config.vllm", r"Model Runner V2 requires Triton", "no Triton on CPU: vLLM's V1 runner is the one that runs"),
    ("vllm.platforms.cpu", r"Triton is not installed|Reset SSM cache type",
     "no Triton on CPU; the SSM cache concerns Mamba models only"),
    ("vllm.v1.worker.cpu_worker", r".* is not found in LD_PRELOAD",
     "a tuning hint (tcmalloc, Intel OpenMP in LD_PRELOAD) for large models on CPU"),
    ("vllm.v1.worker.cpu_worker", r"CPU backend doesn't allow to use `torch.set_num_threads`",
     "vLLM pins the engine's threads itself and ignores torch's calls to set them, as intended"),
    ("vllm.model_executor.model_loader.reload.layerwise", r"RotaryEmbedding: Failed to load weights",
     "rotary embeddings have no weights to load; said again on every weight push"),
    ("vllm.platforms.interface", r"Unknown vLLM environment variable detected: VLLM_DIST_IDENT",
     "vLLM's CPU worker sets VLLM_DIST_IDENT in its own process; the next engine made there (a replacement, "
     "a restart) reads it back as unknown"),
    ("vllm.engine.arg_utils", r"This model does not officially support disabling chunked prefill",
     "chunked prefill is off on CPU on purpose: a partial prefill rewinds the seeded generator, which a "
     "CPU generator cannot do (rollout.vllm_engine)"),
    ("ray._private.worker", r"Started a local Ray instance", "the start-up lines say when Ray is up"),
    ("ray._private.authentication.authentication_token_setup", r"Token authentication is enabled for this Ray cluster",
     "Ray's default, which the run keeps (its token in the work folder: rlhf.orchestration.ray_auth)"),
]

# Set in the driver's environment before anything is imported (role processes inherit it).
ENV = {
    # transformers' "Loading weights" and datasets' bars in every process (huggingface_hub's switch)
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
# Only where no role asks for a GPU: C++ warnings (TORCH_WARN) of torch and of vLLM's C++ ops go
# through c10's logger, which no Python filter reaches. The one a CPU run raises is vLLM's notice
# that it binds the engine's memory to NUMA node 0 (its own choice). C++ errors still show.
CPU_ENV = {"TORCH_CPP_LOG_LEVEL": "ERROR"}


class _Drop(logging.Filter):
    def __init__(self, patterns: list[str]):
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


_DROPS = {name: _Drop([message for logger, message, _why in LOGS if logger == name]) for name, _, _ in LOGS}


def install() -> None:
    """Put every filter in place in this process (again: no duplicates)."""
    for category, message, _why in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # A logger's filters see the records created on it; the libraries get these same logger
    # objects when they ask for them by name later.
    for name, drop in _DROPS.items():
        logging.getLogger(name).addFilter(drop)
