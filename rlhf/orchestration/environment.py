"""Where a run's caches and temporary files go: one work folder, `RLHF_WORK` or `.work` in the
current directory, so `python -m rlhf.main` writes nothing to the system's temporary folder or the
home folder. Set by `rlhf.main` before any library that reads these variables is imported; role
processes inherit them. A variable already set is left as it is.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# variable -> its folder under the work folder, and what goes there
PLACES = {
    "TMPDIR": "tmp",  # every temporary file: vLLM's rendezvous files (vllm_dist_*), data files' datasets cache
    "RAY_TMPDIR": "ray",  # Ray's session files and its token (rlhf.orchestration.ray_auth)
    "VLLM_CACHE_ROOT": "vllm",  # vLLM's model-info cache
    "TORCHINDUCTOR_CACHE_DIR": "inductor",  # kernels torch.compile builds
    "TRITON_CACHE_DIR": "triton",  # kernels Triton builds (GPU)
    "MPLCONFIGDIR": "matplotlib",  # matplotlib's font cache and settings (the report's plots)
    # ~/.cache of every library that follows the XDG convention: Hugging Face's (datasets' cache
    # and lock files, dynamic modules, the hub's cache), torch hub's, ...
    "XDG_CACHE_HOME": "cache",
}

# A Unix socket's path holds at most 107 bytes, and Ray keeps its sockets in its session folder:
# <RAY_TMPDIR>/ray/session_<date>_<time>_<pid>/sockets/plasma_store.
_SOCKET_MAX = 107


def ray_socket_fits(folder: str | Path) -> bool:
    longest = f"{folder}/ray/session_2026-01-01_00-00-00_000000_{os.getpid()}/sockets/plasma_store"
    return len(longest.encode()) <= _SOCKET_MAX


def use_work_folder() -> list[str]:
    """Point every variable of PLACES that is not set at the work folder (created as needed).
    Returns notes for the console (empty when everything stays in the work folder)."""
    work = Path(os.environ.get("RLHF_WORK") or ".work").resolve()
    system_tmp = tempfile.gettempdir()  # before TMPDIR moves: where Ray goes if the work folder cannot hold it
    notes = []
    for var, sub in PLACES.items():
        if var in os.environ:
            continue
        path = work / sub
        if var == "RAY_TMPDIR" and not ray_socket_fits(path):
            os.environ[var] = system_tmp
            notes.append(f"Ray's session files go to {system_tmp}/ray: under {path} the paths of Ray's sockets would "
                         f"pass the {_SOCKET_MAX}-byte limit of Unix sockets; a shorter RLHF_WORK (or RAY_TMPDIR) "
                         f"keeps them in the work folder")
            continue
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)
    tempfile.tempdir = None  # this process's own temporary files follow TMPDIR too
    return notes
