"""The reference workload through the product, one command: build the Qwen2.5-0.5B-shaped
random model if missing, run `python -m rlhf.main` on it, print the median step and phases.

    python -m benchmarks workload [options]      (the suite; or this module directly:)
    python -m benchmarks.reference_workload OUT_DIR [--model DIR] [--shape S] [--steps 8] [key=value ...]

64 prompts x 8 samples x 256 new tokens per step, lr 1e-6, no reference model, the length reward
(benchmarks/reference_rewards.py), bf16 compute with fp32 master weights, bf16 vLLM, one trainer
rank and one vLLM engine sharing one GPU unless overrides say otherwise (e.g. actor.world_size=2
on two GPUs). Medians are over steps 3..N (the first two include CUDA-graph and allocator warm-up),
less the last k with rl.off_policy_steps=k (no generation runs beside them).
OUT_DIR/summary.json holds the medians (and samples_per_s: the batch over the mean step) and
every step's phases; OUT_DIR/run is the run's folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORKLOAD = [
    "sft.steps=0", "rl.prompts_per_step=64", "rl.n=8", "rl.max_new_tokens=256", "rl.lr=1e-6",
    "rl.temperature=1.0", "rollout.max_model_len=512", "eval.max_new_tokens=8", "task.num_eval=64",
    "reward.fn=benchmarks/reference_rewards.py:length_reward", "actor.dtype=bfloat16", "rollout.dtype=bfloat16",
    "actor.micro_batch_size=32", "actor.world_size=1", "actor.num_gpus_per_worker=0.5", "rollout.num_gpus=0.5",
    "rollout.gpu_memory_utilization=0.3",
]
# time/rollout_wait: with rl.off_policy_steps=1, how long the push waited for the next step's
# generation (which ran during time/train; time/generate is its own length)
PHASES = ["time/step", "time/rollout", "time/generate", "time/logprobs", "time/train", "time/rollout_wait", "time/push"]
# per step, beside the phases
STEP_KEYS = ["rollout/logprob_abs_diff_mean", "rollout/logprob_abs_diff_max", "rollout/policy_lag",
             "perf/actor_peak_memory_gb", "perf/actor_mfu", "response/length_mean", "reward/mean"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--model", default=None, help="the model folder (built there if missing; default: one per "
                    "shape under .work/benchmarks/models)")
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--steps", type=int, default=8)
    args, overrides = ap.parse_known_args()
    from benchmarks.reference_model import ensure

    out = Path(args.out)
    model = ensure(args.shape, folder=args.model)
    run = out / "run"
    cmd = [sys.executable, "-m", "rlhf.main", f"model.path={model}", f"rl.steps={args.steps}", *WORKLOAD, *overrides,
           f"trainer.output_dir={run}"]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode:
        return proc.returncode
    from rlhf.output.metrics import read_metrics, rl_steps

    steps = rl_steps(read_metrics(run))
    if not steps:
        print(f"no RL step in {run / 'metrics.jsonl'}", flush=True)
        return 1
    rl = json.loads((run / "config.json").read_text())["rl"]
    # With rl.off_policy_steps=k the last k steps of rl.steps train on batches generated ahead and
    # launch no more: no generation runs beside them, so they would flatter the step time.
    last = rl["steps"] - rl["off_policy_steps"]
    ordered = sorted(steps.items())
    rows = ([r for s, r in ordered if 3 <= s <= last] or [r for s, r in ordered if s <= last]
            or [r for _, r in ordered])
    med = {k: statistics.median(r[k] for r in rows if k in r) for k in PHASES + ["rollout/logprob_abs_diff_mean",
                                                                                    "rollout/policy_lag"]
           if k in rows[0]}
    tokens = statistics.median(r["response/length_mean"] for r in rows) * rl["prompts_per_step"] * rl["n"]
    med["gen_tokens_per_s"] = tokens / med["time/generate"]
    # Throughput is the mean: with partial rollouts steps come in bursts (a long wait, then short
    # steps on batches already done), where the median step says little about samples per second.
    med["samples_per_s"] = rl["prompts_per_step"] * rl["n"] / statistics.fmean(r["time/step"] for r in rows)
    per_step = [{"step": s, **{k: r[k] for k in PHASES + STEP_KEYS if k in r}} for s, r in sorted(steps.items())]
    (out / "summary.json").write_text(json.dumps({"model": model, "shape": args.shape, "overrides": overrides,
                                                  "median_of_steps": [r["step"] for r in rows], "median": med,
                                                  "steps": per_step}, indent=2))
    print("| " + " | ".join(med) + " |\n| " + " | ".join("---" for _ in med) + " |\n| "
          + " | ".join(f"{v:.4g}" for v in med.values()) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
