#!/usr/bin/env bash
# Set up (idempotent) and run a job: bash scripts/run.sh [key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
exec .venv/bin/python -m rlhf.main "$@"
