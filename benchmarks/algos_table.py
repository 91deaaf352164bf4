"""Runs every algorithm from the same SFT checkpoint at the same RL step budget and prints a
table of held-out accuracy (plus PPO's critic diagnostics).

    python benchmarks/algos_table.py SFT_CHECKPOINT OUT_DIR [rl.steps=30 ...]

SFT_CHECKPOINT is a `checkpoints/sft` folder of a default run (`bash scripts/run.sh`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from rlhf.metrics import read_metrics

ALGOS = ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "dapo", "gspo", "ppo"]


def main() -> None:
    sft, out = sys.argv[1], Path(sys.argv[2])
    extra = sys.argv[3:] or ["rl.steps=30", "eval.every=10"]
    rows = []
    for algo in ALGOS:
        run_dir = out / algo
        t = time.time()
        proc = subprocess.run(
            [sys.executable, "-m", "rlhf.main", f"algo={algo}", f"model.path={sft}", "sft.steps=0",
             f"trainer.output_dir={run_dir}", *extra],
            capture_output=True, text=True,
        )
        wall = time.time() - t
        if proc.returncode:
            rows.append((algo, "failed", proc.stderr[-300:]))
            continue
        metrics = read_metrics(run_dir)
        evals = [(r["step"], r["eval/accuracy"]) for r in metrics if "eval/accuracy" in r]
        rl = [r for r in metrics if r["stage"] == "rl" and "reward/mean" in r]
        critic = ""
        if "critic/value_loss" in rl[0]:
            # windows: first 3 steps, the last 3 critic-only steps (if any), the last 5 steps
            pre = [r for r in rl if r.get("actor/updated") == 0]
            windows = [("steps 1-3", rl[:3])] + ([("end of critic pre-training", pre[-3:])] if pre else []) + [
                ("last 5 steps", rl[-5:])]
            mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
            critic = "; ".join(
                f"{name}: value loss {mean(rs, 'critic/value_loss'):.3f}, explained var "
                f"{mean(rs, 'critic/explained_var'):+.2f} (between-prompt share {mean(rs, 'reward/between_prompt_var_share'):.2f})"
                for name, rs in windows
            )
        step_time = sorted(r["time/step"] for r in rl)[len(rl) // 2]
        rows.append((algo, evals, f"{step_time:.2f}s/step median, {wall:.0f}s wall", critic))
        print(algo, evals, flush=True)
    print("\n| algo | held-out accuracy by RL step | time | critic |\n| --- | --- | --- | --- |")
    for row in rows:
        algo, evals, *rest = row
        curve = evals if isinstance(evals, str) else " -> ".join(f"{a:.3f}@{s}" for s, a in evals)
        print(f"| {algo} | {curve} | {' | '.join(rest)} |")


if __name__ == "__main__":
    main()
