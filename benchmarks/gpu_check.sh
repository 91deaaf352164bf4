#!/usr/bin/env bash
# On the GPU machine (device tool), from the repo root, carrying .device/kit/b, .device/kit/a and
# .device/trl:   bash benchmarks/gpu_check.sh MODE (below)
#   one:   the reference workload on one GPU, ours (unseeded requests, as TRL's) then TRL 1.16
#          (benchmarks/vs_trl), same card
#   push1: one GPU: the colocated CUDA IPC push (tiny fp32 test with small buckets, then the 0.5B
#          shape's push time, phases and log-prob gap), then `one` with 6 steps
#   pushB: two GPUs: the IPC push test, the 0.5B pushes (ipc, nccl, tp2), the workload disaggregated
#   engC:  two GPUs: engines agree at tp=2; the workload at dp=2 colocated with sleep mode and 2
#          vLLM engines, and on the FSDP engine
#   pushD: two GPUs: the IPC push (one GPU), vLLM TP=2 from 2 ranks in 200 MB buckets, the
#          workload at dp=2 with sleep mode and 2 engines
#   ours:  only ours of that, after benchmarks/rollout_throughput.py (our rollout engine vs bare vLLM)
#   two:   the reference workload on two GPUs: FSDP2 dp=2, then tensor parallel tp=2
#   prof1: one GPU: where a train step's time goes (benchmarks/train_profile.py, both engines), the
#          colocated IPC push, and our rollout engine against bare vLLM
#   prof2: one GPU: the fused log-prob kernels' tests, then prof1
#   prof3: one GPU: the colocated IPC push with its timeline and in 256 MiB and 2 GiB buckets too,
#          both engines' train step with the host's time by Python function, our rollout engine
#          against bare vLLM over 4 rounds
#   push2: one GPU: the IPC push test (tiny model), the 0.5B push with its timeline (and in 2 GiB
#          buckets), then the reference workload (ours, 5 steps: the push inside the RL loop)
#   prof4: one GPU: the IPC push test (tiny model), then the train step of Automodel as built, with
#          BackendConfig(rms_norm=torch), and of the FSDP engine
#   norm:  one GPU: the Automodel CUDA engine against plain HF (its norms eager), then both engines'
#          train step
#   gen:   one GPU: the engines benchmark (0.5B shape, 8 x 1024 tokens, both engines), then our rollout
#          engine against bare vLLM over 4 rounds
#   gen2:  one GPU: our rollout engine against bare vLLM over 4 rounds, then the reference workload (ours, 5 steps)
#   gen3:  one GPU, right after gen2 on the same machine: TRL 1.16 on the reference workload (5 steps), then
#          the one-GPU tests of the push, the fused log-probs and the Automodel CUDA engine
#   async: one GPU: the reference workload on-policy, then one-step off-policy (rl.off_policy_steps=1,
#          the next step's generation during this step's training), 6 steps each, same card
#   trl:   one GPU, right after `async` on the same machine: TRL 1.16 on the reference workload (6 steps),
#          then the one-GPU tests of PPO resume and the IPC push
#   final: one GPU: the colocated IPC push, then `one` with 6 steps (at most 8 files in $OUT)
#   tests: the GPU-marked tests (tests/test_gpu.py)
#   lora1: one GPU: the LoRA engine tests on CUDA, the engines benchmark (0.5B shape) with every weight
#          training and with LoRA rank 32, then the reference workload both ways (5 steps each)
#   lora2: lora1 without the full-training workload (LoRA's only)
#   lora3: the engines benchmark of lora1 only
#   lora7: one GPU: the engines benchmark with LoRA rank 32 on the Qwen2.5-7B shape at full depth
#          (LAYERS to cut it), 4 x 1024 tokens
#   engines1: the engines benchmark on one GPU (0.5B shape, 8 x 1024 tokens), a few GPU tests,
#          and the reference workload (ours)
#   nccl:  weight push on two GPUs (benchmarks/weight_push.py): disaggregated over NCCL against a
#          plain NCCL broadcast, then vLLM TP=2 fed by a 2-rank trainer (tests on two GPUs also run
#          test_weight_push_on_two_gpus)
#   twoA:  on two GPUs: Automodel vs FSDP engines in bf16 (dp=2, tp=2), the two weight pushes of
#          `nccl`, and a tiny Qwen3-MoE trained with expert parallelism (ep=2) feeding vLLM
#   twoC:  the MoE run of twoA (2 steps) and the engines benchmark of twoB
#   twoB:  on two GPUs: the engines benchmark on the Qwen2.5-7B shape (14 of 28 layers), and the
#          reference workload on the FSDP engine (dp=2)
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
  timeout ${REF_TIMEOUT:-420} python3 benchmarks/reference_workload.py "$work/$name" --model $model --steps ${STEPS:-7} "$@" \
    > "$OUT/$name.log" 2>&1; echo "$name rc=$?" >> "$OUT/table.txt"
  cp "$work/$name/summary.json" "$OUT/$name.json" 2>/dev/null; tail -3 "$OUT/$name.log" >> "$OUT/table.txt"
}
moe_ep2() {  # steps, timeout: a tiny Qwen3-MoE, Automodel with ep=2 on two GPUs, feeding vLLM
    moe=/tmp/ref-moe
    python3 benchmarks/reference_model.py $moe --shape qwen3-moe-tiny >/dev/null 2>&1
    timeout $2 python3 -m rlhf.main model.path=$moe sft.steps=0 rl.steps=$1 rl.prompts_per_step=16 rl.n=4 \
      rl.max_new_tokens=64 rl.lr=1e-6 rl.temperature=1.0 rollout.max_model_len=256 eval.max_new_tokens=8 \
      task.num_eval=16 reward.fn=benchmarks/reference_rewards.py:length_reward actor.dtype=bfloat16 \
      rollout.dtype=bfloat16 actor.world_size=2 actor.ep_size=2 actor.num_gpus_per_worker=0.5 rollout.num_gpus=0.5 \
      rollout.gpu_memory_utilization=0.3 actor.micro_batch_size=16 trainer.output_dir=$work/moe > "$OUT/moe_ep2.log" 2>&1
    echo "moe ep2 rc=$?" >> "$OUT/table.txt"; grep -E "Error|error:" "$OUT/moe_ep2.log" | tail -3 >> "$OUT/table.txt"
    cp $work/moe/metrics.jsonl "$OUT/moe_metrics.jsonl" 2>/dev/null
    python3 -c "import json;[print('moe step',r['step'],'|dlogp| mean',r.get('rollout/logprob_abs_diff_mean'),'max',r.get('rollout/logprob_abs_diff_max'),'train s',r.get('time/train'),'push s',r.get('time/push')) for r in map(json.loads,open('$work/moe/metrics.jsonl')) if r.get('stage')=='rl' and 'time/step' in r]" >> "$OUT/table.txt" 2>&1
}
vs_trl() {  # the reference workload, ours (unseeded requests, as TRL's) then TRL 1.16, same card
    ref ours_1gpu rollout.seed_per_prompt=false
    python3 -m pip install -q --no-deps --target /tmp/trl .device/trl/*.whl 2>/dev/null
    PYTHONPATH=$PWD:/tmp/trl:$PYTHONPATH timeout ${TRL_TIMEOUT:-420} python3 benchmarks/vs_trl/run_trl.py --model $model \
      --steps ${STEPS:-7} > "$OUT/trl.log" 2>&1; echo "trl rc=$?" >> "$OUT/table.txt"; tail -4 "$OUT/trl.log" >> "$OUT/table.txt"
}
train_profiles() {  # timeout, then train_profile.py's options: both engines, one after the other
  local limit=$1; shift
  for engine in automodel fsdp; do
    timeout $limit python3 benchmarks/train_profile.py $model --engine $engine --micro-batch 32 "$@" > "$OUT/train_$engine.log" 2>&1
    echo "train_profile $engine rc=$?" >> "$OUT/table.txt"; grep -A19 "^profiled step" "$OUT/train_$engine.log" >> "$OUT/table.txt"
    tail -1 "$OUT/train_$engine.log" >> "$OUT/table.txt"
  done
}
rollout_bench() {  # timeout, rounds: our rollout engine against bare vLLM
  timeout $1 python3 benchmarks/rollout_throughput.py $model --repeat $2 > "$OUT/rollout_bench.log" 2>&1
  echo "rollout_throughput rc=$?" >> "$OUT/table.txt"; grep -E "^round|^\||by phase" "$OUT/rollout_bench.log" >> "$OUT/table.txt"
}
mode=${1:-one}
case $mode in
  ours)
    timeout 300 python3 benchmarks/rollout_throughput.py $model > "$OUT/rollout_bench.log" 2>&1; tail -7 "$OUT/rollout_bench.log" >> "$OUT/table.txt"
    ref ours_1gpu ;;
  one)
    vs_trl ;;
  push1)
    timeout 120 python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider -k "test_weight_push and ipc" \
      > "$OUT/push_test.log" 2>&1; grep -E "passed|failed|Error" "$OUT/push_test.log" | tail -3 >> "$OUT/table.txt"
    timeout 130 python3 benchmarks/weight_push.py --model $model --mode ipc > "$OUT/weight_push_ipc.log" 2>&1
    echo "weight_push ipc rc=$?" >> "$OUT/table.txt"; tail -14 "$OUT/weight_push_ipc.log" >> "$OUT/table.txt"
    STEPS=6 REF_TIMEOUT=170 TRL_TIMEOUT=190 vs_trl ;;
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
      timeout 400 python3 benchmarks/weight_push.py --model $model --mode $mode > "$OUT/weight_push_$mode.log" 2>&1
      echo "weight_push $mode rc=$?" >> "$OUT/table.txt"; tail -12 "$OUT/weight_push_$mode.log" >> "$OUT/table.txt"
    done ;;
  twoA)
    timeout 160 python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider -k engines_agree \
      > "$OUT/engines_agree.log" 2>&1
    grep -E "passed|failed|automodel vs fsdp|Error" "$OUT/engines_agree.log" | tail -6 >> "$OUT/table.txt"
    for mode in nccl tp2; do
      timeout 130 python3 benchmarks/weight_push.py --model $model --mode $mode > "$OUT/weight_push_$mode.log" 2>&1
      echo "weight_push $mode rc=$?" >> "$OUT/table.txt"; tail -12 "$OUT/weight_push_$mode.log" >> "$OUT/table.txt"
    done
    moe_ep2 3 170 ;;
  twoC)
    moe_ep2 2 190
    timeout 290 python3 benchmarks/engine_throughput.py --shape qwen2.5-7b --layers 14 --world-size 2 --micro-batch 2 \
      > "$OUT/engines_7b.log" 2>&1
    echo "engines 7b rc=$?" >> "$OUT/table.txt"; tail -6 "$OUT/engines_7b.log" >> "$OUT/table.txt" ;;
  twoB)
    timeout 330 python3 benchmarks/engine_throughput.py --shape qwen2.5-7b --layers 14 --world-size 2 --micro-batch 2 \
      > "$OUT/engines_7b.log" 2>&1
    echo "engines 7b rc=$?" >> "$OUT/table.txt"; tail -6 "$OUT/engines_7b.log" >> "$OUT/table.txt"
    STEPS=4 REF_TIMEOUT=240 ref ours_dp2_fsdp actor.world_size=2 actor.engine=fsdp ;;
  pushB)  # two GPUs: the pushes (IPC on one GPU, NCCL, vLLM TP=2) and the workload disaggregated
    timeout 110 python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider -k "test_weight_push and ipc" \
      > "$OUT/push_test.log" 2>&1; grep -E "passed|failed|Error" "$OUT/push_test.log" | tail -3 >> "$OUT/table.txt"
    for mode in ipc nccl tp2; do
      timeout 110 python3 benchmarks/weight_push.py --model $model --mode $mode > "$OUT/weight_push_$mode.log" 2>&1
      echo "weight_push $mode rc=$?" >> "$OUT/table.txt"; grep -A16 "^| $mode" "$OUT/weight_push_$mode.log" >> "$OUT/table.txt"
    done
    STEPS=6 REF_TIMEOUT=170 ref ours_disagg actor.num_gpus_per_worker=1 rollout.num_gpus=1 \
      rollout.placement=disaggregated rollout.gpu_memory_utilization=0.6 ;;
  engC)  # two GPUs: Automodel vs FSDP at tp=2 in bf16; the workload on 2 GPUs colocated (sleep mode, 2 engines), and on the FSDP engine
    timeout 150 python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider -k "engines_agree and tp2" \
      > "$OUT/engines_agree.log" 2>&1
    grep -E "passed|failed|automodel vs fsdp|Error" "$OUT/engines_agree.log" | tail -6 >> "$OUT/table.txt"
    STEPS=5 REF_TIMEOUT=200 ref ours_dp2_sleep actor.world_size=2 rollout.num_engines=2 rollout.sleep=true
    STEPS=4 REF_TIMEOUT=190 ref ours_dp2_fsdp actor.world_size=2 rollout.num_engines=2 actor.engine=fsdp ;;
  pushD)  # two GPUs: the IPC push on one GPU (cold start first), vLLM TP=2 fed by 2 ranks in 200 MB buckets
          # (the embedding travels on its own), then the workload at dp=2 with sleep mode and 2 engines
    timeout 200 python3 benchmarks/weight_push.py --model $model --mode ipc > "$OUT/weight_push_ipc.log" 2>&1
    echo "weight_push ipc rc=$?" >> "$OUT/table.txt"; grep -A16 "^| ipc" "$OUT/weight_push_ipc.log" >> "$OUT/table.txt"
    timeout 130 python3 benchmarks/weight_push.py --model $model --mode tp2 rollout.bucket_bytes=200000000 \
      > "$OUT/weight_push_tp2.log" 2>&1
    echo "weight_push tp2 rc=$?" >> "$OUT/table.txt"; grep -A16 "^| tp2" "$OUT/weight_push_tp2.log" >> "$OUT/table.txt"
    STEPS=3 REF_TIMEOUT=150 ref ours_dp2_sleep actor.world_size=2 rollout.num_engines=2 rollout.sleep=true ;;
  prof1|prof2)
    if [ "$1" = prof2 ]; then
      timeout 100 python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider -k "fused_logprobs or logprobs_match_hf" \
        > "$OUT/tests_fused.log" 2>&1
      grep -E "passed|failed|fused log-probs|max \|dlogp|Error" "$OUT/tests_fused.log" | tail -8 >> "$OUT/table.txt"
    fi
    timeout 170 python3 benchmarks/weight_push.py --model $model --mode ipc > "$OUT/weight_push_ipc.log" 2>&1
    echo "weight_push ipc rc=$?" >> "$OUT/table.txt"; grep -A16 "^| ipc" "$OUT/weight_push_ipc.log" >> "$OUT/table.txt"
    train_profiles 110 --top 16
    rollout_bench 190 2 ;;
  prof3)
    timeout 150 python3 benchmarks/weight_push.py --model $model --mode ipc --more-buckets 268435456,2147483648 \
      > "$OUT/weight_push_ipc.log" 2>&1
    echo "weight_push ipc rc=$?" >> "$OUT/table.txt"; grep -A20 "^| ipc" "$OUT/weight_push_ipc.log" >> "$OUT/table.txt"
    train_profiles 105 --top 12 --host-top 25
    rollout_bench 170 4 ;;
  push2)
    timeout 110 python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider -k "test_weight_push and ipc" \
      > "$OUT/push_test.log" 2>&1; grep -E "passed|failed|Error" "$OUT/push_test.log" | tail -3 >> "$OUT/table.txt"
    timeout 140 python3 benchmarks/weight_push.py --model $model --mode ipc --more-buckets 2147483648 \
      > "$work/weight_push_ipc.log" 2>&1
    echo "weight_push ipc rc=$?" >> "$OUT/table.txt"; grep -A22 "^| ipc" "$work/weight_push_ipc.log" >> "$OUT/table.txt"
    grep "last push" "$work/weight_push_ipc.log" >> "$OUT/table.txt"
    STEPS=5 REF_TIMEOUT=200 ref ours_1gpu rollout.seed_per_prompt=false ;;
  prof4)
    timeout 170 python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider -k "test_weight_push and ipc" \
      > "$OUT/push_test.log" 2>&1; echo "push test rc=$?" >> "$OUT/table.txt"
    grep -E "passed|failed|Error" "$OUT/push_test.log" | tail -3 >> "$OUT/table.txt"
    for variant in "automodel" "automodel --automodel-backend rms_norm=torch" "fsdp"; do
      timeout 85 python3 benchmarks/train_profile.py $model --engine $variant --micro-batch 32 --no-profile \
        > "$work/train.log" 2>&1
      echo "train_profile $variant rc=$?" >> "$OUT/table.txt"; tail -1 "$work/train.log" >> "$OUT/table.txt"
    done ;;
  norm)
    timeout 100 python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider -k "automodel_cuda_engine" \
      > "$OUT/norm_test.log" 2>&1; echo "norm test rc=$?" >> "$OUT/table.txt"
    grep -E "passed|failed|Error|max \|dlogp" "$OUT/norm_test.log" | tail -3 >> "$OUT/table.txt"
    for engine in automodel fsdp automodel; do
      timeout 75 python3 benchmarks/train_profile.py $model --engine $engine --micro-batch 32 --no-profile \
        > "$work/train.log" 2>&1
      echo "train_profile $engine rc=$?" >> "$OUT/table.txt"; grep "^| $engine" "$work/train.log" >> "$OUT/table.txt"
    done ;;
  gen)
    timeout 200 python3 benchmarks/engine_throughput.py --shape qwen2.5-0.5b > "$OUT/engines_0.5b.log" 2>&1
    echo "engines rc=$?" >> "$OUT/table.txt"; tail -6 "$OUT/engines_0.5b.log" >> "$OUT/table.txt"
    rollout_bench 340 4 ;;
  gen2)
    rollout_bench 340 4
    STEPS=5 REF_TIMEOUT=220 ref ours_1gpu rollout.seed_per_prompt=false
    cp "$work/ours_1gpu/run/metrics.jsonl" "$OUT/ours_metrics.jsonl" 2>/dev/null ;;
  gen3)
    python3 -m pip install -q --no-deps --target /tmp/trl .device/trl/*.whl 2>/dev/null
    PYTHONPATH=$PWD:/tmp/trl:$PYTHONPATH timeout 240 python3 benchmarks/vs_trl/run_trl.py --model $model --steps 5 \
      > "$OUT/trl.log" 2>&1; echo "trl rc=$?" >> "$OUT/table.txt"; tail -4 "$OUT/trl.log" >> "$OUT/table.txt"
    timeout 250 python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider \
      -k "(test_weight_push and ipc) or fused_logprobs or automodel_cuda_engine" > "$OUT/tests.log" 2>&1
    echo "tests rc=$?" >> "$OUT/table.txt"; grep -E "passed|failed|fused log-probs|max \|dlogp|gap|Error" "$OUT/tests.log" | tail -10 >> "$OUT/table.txt" ;;
  async)
    for name in on off; do
      extra=$([ $name = off ] && echo rl.off_policy_steps=1)
      STEPS=6 REF_TIMEOUT=200 ref ours_$name rollout.seed_per_prompt=false $extra
      cp "$work/ours_$name/run/metrics.jsonl" "$OUT/ours_${name}_metrics.jsonl" 2>/dev/null
      python3 -c "import json;[print('$name step',r['step'],*(f'{k[5:]} {r[k]:.3f}' for k in ('time/step','time/generate','time/train','time/rollout_wait','time/push') if k in r),'lag',r['rollout/policy_lag'],'dlogp',round(r['rollout/logprob_abs_diff_mean'],4)) for r in map(json.loads,open('$OUT/ours_${name}_metrics.jsonl')) if r.get('stage')=='rl' and 'time/step' in r]" >> "$OUT/table.txt" 2>&1
    done ;;
  trl)
    python3 -m pip install -q --no-deps --target /tmp/trl .device/trl/*.whl 2>/dev/null
    PYTHONPATH=$PWD:/tmp/trl:$PYTHONPATH timeout 240 python3 benchmarks/vs_trl/run_trl.py --model $model --steps 6 \
      > "$OUT/trl.log" 2>&1; echo "trl rc=$?" >> "$OUT/table.txt"; tail -4 "$OUT/trl.log" >> "$OUT/table.txt"
    timeout 200 python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider -k "ppo_resume or test_weight_push" \
      > "$OUT/tests.log" 2>&1; echo "tests rc=$?" >> "$OUT/table.txt"
    grep -E "passed|failed|max \|dlogp|gap|Error" "$OUT/tests.log" | tail -8 >> "$OUT/table.txt" ;;
  final)
    timeout 140 python3 benchmarks/weight_push.py --model $model --mode ipc > "$work/weight_push_ipc.log" 2>&1
    echo "weight_push ipc rc=$?" >> "$OUT/table.txt"; grep -A18 "^| ipc" "$work/weight_push_ipc.log" >> "$OUT/table.txt"
    grep -E "Error|error" "$work/weight_push_ipc.log" | tail -3 >> "$OUT/table.txt"
    STEPS=6 REF_TIMEOUT=180 TRL_TIMEOUT=200 vs_trl
    cp "$work/ours_1gpu/run/metrics.jsonl" "$OUT/ours_metrics.jsonl" 2>/dev/null ;;
  lora3)
    for r in "0" "32" "32 --lora-recompute"; do
      timeout 90 python3 benchmarks/engine_throughput.py --engines automodel --lora-rank $r > "$OUT/engines.log" 2>&1
      echo "engines lora $r rc=$?" >> "$OUT/table.txt"; grep "^| automodel" "$OUT/engines.log" >> "$OUT/table.txt"
    done ;;
  lora1|lora2)
    timeout 120 python3 -m pytest -q -s tests/test_lora.py -p no:cacheprovider -k "plain_lora_and or names" \
      > "$OUT/lora_tests.log" 2>&1; echo "lora tests rc=$?" >> "$OUT/table.txt"
    grep -E "passed|failed|LoRA rank|^E " "$OUT/lora_tests.log" | tail -6 >> "$OUT/table.txt"
    for r in "0" "32" "32 --lora-recompute"; do
      timeout 100 python3 benchmarks/engine_throughput.py --engines automodel --lora-rank $r > "$OUT/engines.log" 2>&1
      echo "engines lora $r rc=$?" >> "$OUT/table.txt"; grep "^| automodel" "$OUT/engines.log" >> "$OUT/table.txt"
    done
    for name in lora $([ $mode = lora1 ] && echo full); do
      extra=$([ $name = lora ] && echo "actor.lora.rank=32 rl.lr=1e-5")
      STEPS=5 REF_TIMEOUT=185 ref ref_$name rollout.seed_per_prompt=false $extra
      python3 -c "import json;[print('$name step',r['step'],*(f'{k[k.index(chr(47))+1:]} {r[k]:.3f}' for k in ('time/step','time/generate','time/train','time/push','perf/actor_peak_memory_gb') if k in r),'dlogp',round(r['rollout/logprob_abs_diff_mean'],4)) for r in map(json.loads,open('$work/ref_$name/run/metrics.jsonl')) if r.get('stage')=='rl' and 'time/step' in r]" >> "$OUT/table.txt" 2>&1
    done ;;
  lora7)
    timeout 560 python3 benchmarks/engine_throughput.py --shape qwen2.5-7b ${LAYERS:+--layers $LAYERS} --engines automodel \
      --lora-rank 32 --batch 4 --micro-batch 4 --steps 3 > "$OUT/engines_7b_lora.log" 2>&1
    echo "engines 7b lora32 rc=$?" >> "$OUT/table.txt"; tail -5 "$OUT/engines_7b_lora.log" >> "$OUT/table.txt" ;;
  tests)
    python3 -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -40 ;;
esac
cat "$OUT/table.txt" 2>/dev/null
