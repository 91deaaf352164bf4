#!/usr/bin/env bash
# Downloads the TRL wheel the vs-trl suite needs into DIR (default: .work/benchmarks/wheels), for a
# GPU machine without network: there, `pip install --no-deps --target SITE DIR/*.whl` and put SITE on
# PYTHONPATH. Run on a machine with network:   bash benchmarks/vs_trl/fetch_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-.work/benchmarks/wheels}
"${PYTHON:-python3}" -m pip download trl==1.16.0 --no-deps -d "$dir"
ls "$dir"
