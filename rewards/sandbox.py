"""Runs untrusted Python (model-written code) in a separate, fenced process.

Walls, from the kernel up:
- its own network namespace (no interfaces but a down loopback) when the system allows it;
- an unprivileged user (`nobody`) when started as root, so it cannot write where it has no
  permission and the process-count limit holds;
- resource limits: CPU seconds, address space, process count, file size, open files;
- a wall-clock timeout, after which its whole process group is killed;
- its own temporary working directory, removed afterwards;
- inside the interpreter, an audit hook that refuses network calls and writes outside the
  working directory with a clear message (a courtesy: the walls above are what hold).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000

_PRELUDE = r'''
import os as _os, sys as _sys
_root = _os.path.realpath(_os.getcwd())
_WRITE = _os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_APPEND | _os.O_TRUNC
def _inside(p):
    try:
        p = _os.path.realpath(_os.fsdecode(p))
    except Exception:
        return False
    return p == _root or p.startswith(_root + _os.sep)
def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int) or path is None:
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(flags & _WRITE)
        if writing and not _inside(path):
            raise PermissionError("sandbox: writing outside the working directory is not allowed: %r" % (path,))
    elif event.startswith("socket.") and event not in ("socket.__new__",):
        raise PermissionError("sandbox: network access is not allowed (%s)" % event)
    elif event in ("os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.symlink", "os.link", "os.truncate", "shutil.rmtree"):
        if args and not _inside(args[0]):
            raise PermissionError("sandbox: changing files outside the working directory is not allowed: %r" % (args[0],))
_sys.addaudithook(_hook)
del _hook
'''


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0
    memory_bytes: int = 512 << 20
    max_processes: int = 16
    max_file_bytes: int = 16 << 20
    max_open_files: int = 64


@dataclass
class SandboxResult:
    status: str  # ok | error | timeout | killed
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


def _interpreter(unprivileged: bool) -> str:
    """The sandbox's Python; for an unprivileged user, one it can reach (a venv under /root is not)."""
    candidates = [os.environ.get("RLHF_SANDBOX_PYTHON"), sys.executable, "/usr/bin/python3"]
    for candidate in filter(None, candidates):
        if not unprivileged or _reachable(candidate):
            return candidate
    raise RuntimeError("no Python interpreter the sandbox user can run; set RLHF_SANDBOX_PYTHON to one")


def _reachable(path: str) -> bool:
    """Every directory above `path` can be traversed, and the file itself run, by anyone."""
    p = Path(os.path.realpath(path))
    if not p.exists() or not p.stat().st_mode & 0o001:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in p.parents)


def _workdir_base() -> str | None:
    base = tempfile.gettempdir()
    return base if _reachable(base) else "/tmp"


def _preexec(limits: SandboxLimits, drop_to: tuple[int, int] | None, new_net: bool):
    def setup() -> None:
        if new_net:
            ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)
        cpu = int(limits.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if drop_to is not None:
            os.setgroups([])
            os.setgid(drop_to[1])
            os.setuid(drop_to[0])
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))

    return setup


def _can_unshare_net() -> bool:
    if not hasattr(_can_unshare_net, "result"):
        try:
            r = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10)
            _can_unshare_net.result = r.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _can_unshare_net.result = False
    return _can_unshare_net.result


def run_python(code: str, limits: SandboxLimits = SandboxLimits(), stdin: str = "") -> SandboxResult:
    root = os.geteuid() == 0
    drop_to = None
    workdir = Path(tempfile.mkdtemp(prefix="rlhf-sandbox-", dir=_workdir_base() if root else None))
    try:
        if root:
            nobody = pwd.getpwnam("nobody")
            drop_to = (nobody.pw_uid, nobody.pw_gid)
            os.chown(workdir, *drop_to)
        (workdir / "main.py").write_text(_PRELUDE + "\n" + code)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
        start = time.perf_counter()
        proc = subprocess.Popen(
            [_interpreter(unprivileged=root), "-I", "-B", "main.py"],
            cwd=workdir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_preexec(limits, drop_to, _can_unshare_net()),
        )
        try:
            out, err = proc.communicate(stdin.encode(), timeout=limits.timeout_s)
            status = "ok" if proc.returncode == 0 else ("killed" if proc.returncode < 0 else "error")
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, err = proc.communicate()
            status = "timeout"
        _kill_group(proc.pid)  # anything it forked dies with it
        return SandboxResult(status, proc.returncode, out.decode(errors="replace")[-65536:],
                             err.decode(errors="replace")[-65536:], time.perf_counter() - start)
    finally:
        if drop_to is not None:
            _kill_user_processes(drop_to[0], workdir)
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_user_processes(uid: int, workdir: Path) -> None:
    """Processes that left the group (setsid) but still run in this sandbox's directory."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            if pid_dir.stat().st_uid == uid and os.readlink(pid_dir / "cwd").startswith(str(workdir)):
                os.kill(int(pid_dir.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue
