# Sourced by the run and test scripts: every cache and temp file of a run goes under .work/
# (override RLHF_WORK to move them), never into /tmp or ~/.cache.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${RLHF_WORK:-$root/.work}
export TMPDIR=$work/tmp
export RAY_TMPDIR=$work/ray
export VLLM_CACHE_ROOT=$work/vllm
export TORCHINDUCTOR_CACHE_DIR=$work/inductor
export RLHF_TEST_WORK=$work/test
mkdir -p "$TMPDIR" "$RAY_TMPDIR" "$VLLM_CACHE_ROOT" "$TORCHINDUCTOR_CACHE_DIR"
