#!/usr/bin/env bash
# Set up (idempotent) and run a job: bash scripts/run.sh [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bash scripts/setup.sh
exec .venv/bin/python -m rlhf.main "$@"
