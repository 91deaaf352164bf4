"""The layer contracts of pyproject.toml ([tool.importlinter]) hold, and the check would catch a
cycle: the same contract types on a small package with a planted cycle fail."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def lint(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([*LINT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_project_keeps_its_layers_and_has_no_cycles():
    got = lint(ROOT)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "0 broken" in got.stdout


def test_a_planted_cycle_and_a_back_edge_are_caught(tmp_path):
    for path, text in {
        "low/__init__.py": "", "low/a.py": "from low import b\n", "low/b.py": "from low import a\n",  # a cycle
        "high/__init__.py": "", "high/top.py": "import low.a\n", "low/c.py": "import high.top\n",  # a back-edge
    }.items():
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(text)
    (tmp_path / "contracts.ini").write_text(
        "[importlinter]\nroot_packages =\n    high\n    low\n\n"
        "[importlinter:contract:layers]\nname = layers\ntype = layers\nlayers =\n    high\n    low\n\n"
        "[importlinter:contract:cycles]\nname = cycles\ntype = acyclic_siblings\nancestors =\n    high\n    low\n")
    got = lint(tmp_path, "--config", "contracts.ini")
    assert got.returncode != 0
    assert "layers BROKEN" in got.stdout and "cycles BROKEN" in got.stdout
    assert "low.c -> high.top" in got.stdout and "No cycles are allowed in low" in got.stdout
