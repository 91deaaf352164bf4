"""Runs every algorithm from the same SFT checkpoint at the same RL step budget and prints a
table of held-out accuracy (plus PPO's critic diagnostics).

    python -m benchmarks algos SFT_CHECKPOINT [rl.steps=30 ...]      (the suite; or this module directly:)
    python benchmarks/algos_table.py SFT_CHECKPOINT OUT_DIR [rl.steps=30 ...]

SFT_CHECKPOINT is a `checkpoints/sft` folder of a default run (`bash scripts/run.sh`).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf.output.metrics import read_metrics  # noqa: E402

ALGOS = ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "dapo", "gspo", "ppo"]
DEFAULT_OVERRIDES = ["rl.steps=30", "eval.every=10"]


def run(sft: str, out: Path, extra: list[str], timeout: float | None = None, algos: list[str] = ALGOS) -> list[dict]:
    """One run per algorithm (`python -m rlhf.main algo=<name> ...` into out/<name>); a row each:
    held-out accuracy by RL step, the median step, the wall time, PPO's critic windows, or the error."""
    rows = []
    for algo in algos:
        run_dir = out / algo
        t = time.time()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "rlhf.main", f"algo={algo}", f"model.path={sft}", "sft.steps=0",
                 f"trainer.output_dir={run_dir}", *extra],
                capture_output=True, text=True, timeout=timeout, cwd=ROOT,
            )
        except subprocess.TimeoutExpired:
            rows.append({"algo": algo, "error": f"ran past {timeout:.0f} s"})
            continue
        wall = time.time() - t
        if proc.returncode:
            rows.append({"algo": algo, "error": proc.stderr[-300:]})
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
        rows.append({"algo": algo, "accuracy_by_step": evals, "median_step_s": step_time, "wall_s": wall, "critic": critic})
        print(algo, evals, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| algo | held-out accuracy by RL step | time | critic |", "| --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['algo']} | failed | {r['error'].strip().splitlines()[-1] if r['error'].strip() else ''} | |")
            continue
        curve = " -> ".join(f"{a:.3f}@{s}" for s, a in r["accuracy_by_step"])
        lines.append(f"| {r['algo']} | {curve} | {r['median_step_s']:.2f}s/step median, {r['wall_s']:.0f}s wall "
                     f"| {r['critic']} |")
    return "\n".join(lines)


def main() -> None:
    sft, out = sys.argv[1], Path(sys.argv[2])
    rows = run(sft, out, sys.argv[3:] or DEFAULT_OVERRIDES)
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
