#!/usr/bin/env bash
# On the GPU machine (device tool), from the repo root, after the kit is unpacked:
#   python3 .device/kit/a/setup.py --all && . /tmp/kit/env.sh && bash benchmarks/gpu_check.sh
# Runs the GPU-marked tests (the CUDA engine path, the whole job on one GPU) and prints a table.
set -uo pipefail
export PYTHONPATH=$PWD:$PWD/.device/pylib:${PYTHONPATH:-}  # .device/pylib: pytest, carried
work=${RLHF_WORK:-/tmp/rlhf-work}
export TMPDIR=$work/tmp RAY_TMPDIR=$work/ray VLLM_CACHE_ROOT=$work/vllm TORCHINDUCTOR_CACHE_DIR=$work/inductor
mkdir -p "$TMPDIR" "$RAY_TMPDIR" "$VLLM_CACHE_ROOT" "$TORCHINDUCTOR_CACHE_DIR"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -60
