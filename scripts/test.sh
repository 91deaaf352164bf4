#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bash scripts/setup.sh
status=0
# Two processes (three were slower on two cores), each taking whole test modules (module fixtures
# stay in one process), in collection order: the slowest modules first (SLOW_MODULES in
# tests/conftest.py), so the short ones even out the end.
.venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -ra --durations=15 "$@" || status=$?
# Nothing may outlive the tests: no Ray processes, no shared-memory segments.
pkill -f "$RAY_TMPDIR" 2>/dev/null || true
exit $status
