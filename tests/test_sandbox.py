"""The code sandbox stops network access, writes outside its directory, fork bombs and memory
hogs, scores them as failed, and leaves nothing running."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from rewards.builtin import code_tests
from rewards.sandbox import SandboxLimits, run_python

LIMITS = SandboxLimits(timeout_s=5.0, memory_bytes=256 << 20, max_processes=16)


def sandbox_pids() -> set[int]:
    """Processes whose working directory is a sandbox's."""
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if "rlhf-sandbox-" in os.readlink(d / "cwd"):
                    pids.add(int(d.name))
            except OSError:
                pass
    return pids


def test_plain_code_runs():
    r = run_python("print(sum(range(10)))", LIMITS)
    assert r.status == "ok" and r.stdout.strip() == "45"


def test_network_is_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        deadline = time.time() + 8
        while time.time() < deadline:
            try:
                accepted.append(server.accept())
            except socket.timeout:
                continue

    t = threading.Thread(target=accept)
    t.start()
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'x')\nprint('connected')"
    r = run_python(code, LIMITS)
    t.join()
    server.close()
    assert r.status == "error" and "connected" not in r.stdout
    assert accepted == []


def test_writes_outside_its_directory_are_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    os.chmod(tmp_path, 0o777)  # even where the filesystem would allow it
    code = f"open({str(target)!r}, 'w').write('x')\nprint('wrote')"
    r = run_python(code, LIMITS)
    assert r.status == "error" and "wrote" not in r.stdout and not target.exists()
    assert "writing outside the working directory" in r.stderr
    inside = run_python("open('ok.txt', 'w').write('fine')\nprint(open('ok.txt').read())", LIMITS)
    assert inside.status == "ok" and inside.stdout.strip() == "fine"


def test_fork_bomb_is_contained():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t = time.time()
    r = run_python(code, SandboxLimits(timeout_s=3.0, memory_bytes=256 << 20, max_processes=16))
    assert r.status in ("timeout", "killed", "error")
    assert time.time() - t < 20
    time.sleep(0.5)
    assert sandbox_pids() == set()


def test_unbounded_allocation_is_stopped():
    t = time.time()
    r = run_python("x = []\nwhile True:\n    x.append(bytearray(10 << 20))\n", LIMITS)
    assert r.status == "error" and "MemoryError" in r.stderr
    assert time.time() - t < 20


def test_infinite_loop_times_out():
    r = run_python("while True:\n    pass\n", SandboxLimits(timeout_s=1.0))
    assert r.status in ("timeout", "killed")


@pytest.mark.parametrize(
    "response, reward",
    [
        ("```python\ndef add(a, b):\n    return a + b\n```", 1.0),
        ("def add(a, b):\n    return a - b\n", 0.5),  # passes add(0, 0) only
        ("```python\nimport socket\nsocket.create_connection(('127.0.0.1', 1))\n```", 0.0),
        ("no code here", 0.0),
    ],
)
def test_code_reward_scores_passed_fraction(response, reward):
    tests = ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]
    assert code_tests("write add", response, tests)["reward"] == reward
