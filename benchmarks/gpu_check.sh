#!/usr/bin/env bash
# On the GPU machine (device tool), from the repo root, carrying .device/kit/b, .device/kit/a and
# .device/trl:   bash benchmarks/gpu_check.sh one|ours|two|tests|engines1|nccl
#   one:   the reference workload on one GPU, ours (unseeded requests, as TRL's) then TRL 1.16
#          (benchmarks/vs_trl), same card
#   ours:  only ours of that, after benchmarks/rollout_throughput.py (our rollout engine vs bare vLLM)
#   two:   the reference workload on two GPUs: FSDP2 dp=2, then tensor parallel tp=2
#   tests: the GPU-marked tests (tests/test_gpu.py)
#   engines1: the engines benchmark on one GPU (0.5B shape, 8 x 1024 tokens), a few GPU tests,
#          and the reference workload (ours)
#   nccl:  weight push on two GPUs (benchmarks/nccl_push.py): disaggregated over NCCL against a
#          plain NCCL broadcast, then vLLM TP=2 fed by a 2-rank trainer (tests on two GPUs also run
#          test_weight_push_on_two_gpus)
# Logs and summaries go to $OUT; a table is printed last.
set -uo pipefail
python3 .device/kit/b/setup.py >/dev/null && python3 .device/kit/a/setup.py --all >/dev/null && . /tmp/kit/env.sh
export PYTHONPATH=$PWD:${PYTHONPATH:-}
work=${RLHF_WORK:-/tmp/rlhf-work}
export TMPDIR=$work/tmp RAY_TMPDIR=$work/ray VLLM_CACHE_ROOT=$work/vllm TORCHINDUCTOR_CACHE_DIR=$work/inductor
mkdir -p "$TMPDIR" "$RAY_TMPDIR" "$VLLM_CACHE_ROOT" "$TORCHINDUCTOR_CACHE_DIR" "${OUT:=/tmp/out}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
model=/tmp/ref-0.5b
[ -f $model/config.json ] || python3 benchmarks/reference_model.py $model >/dev/null
ref() {  # name, overrides...
  local name=$1; shift
  timeout 420 python3 benchmarks/reference_workload.py "$work/$name" --model $model --steps 7 "$@" \
    > "$OUT/$name.log" 2>&1; echo "$name rc=$?" >> "$OUT/table.txt"
  cp "$work/$name/summary.json" "$OUT/$name.json" 2>/dev/null; tail -3 "$OUT/$name.log" >> "$OUT/table.txt"
}
case ${1:-one} in
  ours)
    timeout 300 python3 benchmarks/rollout_throughput.py $model > "$OUT/rollout_bench.log" 2>&1; tail -7 "$OUT/rollout_bench.log" >> "$OUT/table.txt"
    ref ours_1gpu ;;
  one)
    ref ours_1gpu rollout.seed_per_prompt=false  # TRL seeds no request either
    python3 -m pip install -q --no-deps --target /tmp/trl .device/trl/*.whl 2>/dev/null
    PYTHONPATH=$PWD:/tmp/trl:$PYTHONPATH timeout 420 python3 benchmarks/vs_trl/run_trl.py --model $model --steps 7 \
      > "$OUT/trl.log" 2>&1; echo "trl rc=$?" >> "$OUT/table.txt"; tail -4 "$OUT/trl.log" >> "$OUT/table.txt" ;;
  two)
    ref ours_dp2 actor.world_size=2
    ref ours_tp2 actor.world_size=2 actor.tp_size=2 ;;
  engines1)
    timeout 240 python3 benchmarks/engine_throughput.py --shape qwen2.5-0.5b > "$OUT/engines_0.5b.log" 2>&1
    echo "engines rc=$?" >> "$OUT/table.txt"; tail -6 "$OUT/engines_0.5b.log" >> "$OUT/table.txt"
    timeout 300 python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider \
      -k "logprobs_match_hf or offload or sleep_mode" > "$OUT/tests1.log" 2>&1
    grep -E "passed|failed|offload freed|sleep mode|max \|dlogp" "$OUT/tests1.log" >> "$OUT/table.txt"
    ref ours_1gpu rollout.seed_per_prompt=false ;;
  nccl)
    for mode in nccl tp2; do
      timeout 400 python3 benchmarks/nccl_push.py --model $model --mode $mode > "$OUT/nccl_push_$mode.log" 2>&1
      echo "nccl_push $mode rc=$?" >> "$OUT/table.txt"; tail -12 "$OUT/nccl_push_$mode.log" >> "$OUT/table.txt"
    done ;;
  tests)
    python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -40 ;;
esac
cat "$OUT/table.txt" 2>/dev/null
