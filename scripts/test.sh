#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bash scripts/setup.sh
status=0
# Two processes, each taking whole test modules (module fixtures stay in one process), modules with
# the most tests first (xdist's order: end-to-end modules then overlap with unit tests; three
# processes, or the longest modules first, were slower on two cores).
.venv/bin/python -m pytest -n 2 --dist loadfile -ra --durations=15 "$@" || status=$?
# Nothing may outlive the tests: no Ray processes, no shared-memory segments.
pkill -f "$RAY_TMPDIR" 2>/dev/null || true
exit $status
