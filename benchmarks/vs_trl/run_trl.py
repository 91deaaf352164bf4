"""TRL 1.16 `GRPOTrainer` on the reference workload, timed per step and per phase.

The baseline our step time is compared with (see README.md here): the model folder of
`benchmarks/reference_model.py`, the built-in arithmetic task's training prompts, 64 prompts x 8
samples x 256 new tokens per optimizer step, lr 1e-6, no reference model (beta=0), the length
reward of `benchmarks/reference_rewards.py`, vLLM in colocate mode. TRL is a benchmark-only
dependency: nothing in the product imports it.

Timings: the wall time of each optimizer step (callback to callback, CUDA synchronised), and
TRL's own phase timings. TRL measures its phases with `trl.extras.profiling.ProfilingContext`
but only reports them to wandb/mlflow/trackio; this script records the same contexts per step.

    python -m benchmarks vs-trl [options]      (the suite: ours, then this; or this alone:)
    python benchmarks/vs_trl/run_trl.py --model MODEL_DIR [--steps 8] [--no-vllm ...] [--json PATH]

Prints one JSON line per step and a table of medians over steps 3..N; `--json` writes the figures
to that file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: benchmarks/, rlhf/

from benchmarks.reference_model import task_problems
from benchmarks.reference_rewards import length_reward

PHASES = ["step_s", "generate_s", "weight_sync_s", "old_logprobs_s", "prepare_other_s", "loss_forward_s", "rest_s"]
GENERATE = {"vLLM.generate", "transformers.generate", "transformers.generate_batch"}


def length_reward_trl(prompts, completions, answer, **kwargs) -> list[float]:
    """TRL's batched reward signature around the product's per-sample one."""
    return [length_reward(p, c, a) for p, c, a in zip(prompts, completions, answer, strict=True)]


class PhaseClock:
    """Sums TRL's profiling contexts per step, keyed by their nesting ("_prepare_inputs/vLLM.generate")."""

    def __init__(self):
        self.open: list[str] = []
        self.times: dict[str, float] = defaultdict(float)

    def install(self) -> None:
        from trl.extras.profiling import ProfilingContext

        enter, leave, clock = ProfilingContext.__enter__, ProfilingContext.__exit__, self

        def __enter__(ctx):
            clock.open.append(ctx.name.split(".", 1)[-1])  # drop the "GRPOTrainer." prefix
            return enter(ctx)

        def __exit__(ctx, *exc):
            clock.times["/".join(clock.open)] += time.perf_counter() - ctx._start_time
            clock.open.pop()
            return leave(ctx, *exc)

        ProfilingContext.__enter__, ProfilingContext.__exit__ = __enter__, __exit__

    def take(self) -> dict[str, float]:
        times, self.times = dict(self.times), defaultdict(float)
        return times


def phases(step_s: float, times: dict[str, float]) -> dict[str, float]:
    """One step's wall time split into the table's phases. `prepare_other` is the rest of TRL's
    input preparation (tokenisation, rewards, advantages, padding, copies); `rest` is what no
    TRL context covers (backward, optimizer step, logging)."""
    innermost = {key: key.rsplit("/", 1)[-1] for key in times}
    row = {
        "step_s": step_s,
        "generate_s": sum((t for k, t in times.items() if innermost[k] in GENERATE), 0.0),
        "weight_sync_s": sum((t for k, t in times.items() if innermost[k] == "sync_weights"), 0.0),
        "old_logprobs_s": times.get("_prepare_inputs/_get_per_token_logps_and_entropies", 0.0),
        "loss_forward_s": times.get("compute_loss", 0.0),
    }
    inside = row["generate_s"] + row["weight_sync_s"] + row["old_logprobs_s"]
    row["prepare_other_s"] = times.get("_prepare_inputs", 0.0) - inside
    row["rest_s"] = step_s - inside - row["prepare_other_s"] - row["loss_forward_s"]
    return row


def make_callback(clock: PhaseClock, rows: list[dict]):
    import torch
    from transformers import TrainerCallback

    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        """Step k's time runs from the end of step k-1 (or the start of training) to the end of step k."""

        def on_train_begin(self, args, state, control, **kw):
            sync()
            clock.take()
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            sync()
            now = time.perf_counter()
            times = clock.take()
            rows.append({"step": state.global_step, **phases(now - self.last, times), "trl_timings": times})
            self.last = now

        def on_log(self, args, state, control, logs=None, **kw):
            if "reward" not in logs:  # the end-of-training summary
                return
            row = rows[-1]
            row.update(reward=logs["reward"], reward_std=logs["reward_std"],
                       completion_mean_length=logs["completions/mean_length"])
            print(json.dumps(rounded(row)), flush=True)

    return StepTimer()


def rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    return {k: rounded(v) for k, v in value.items()} if isinstance(value, dict) else value


def summarise(rows: list[dict]) -> dict:
    window = [r for r in rows if r["step"] >= 3] or rows
    return {
        "median_of_steps": [r["step"] for r in window],
        **{p: statistics.median(r[p] for r in window) for p in PHASES},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="folder written by benchmarks/reference_model.py")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per optimizer step")
    parser.add_argument("--gens", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=32,
                        help="sequences per forward/backward (per_device_train_batch_size); must divide prompts x gens")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--model-dtype", choices=["float32", "bfloat16"], default="float32",
                        help="trainer weights: float32 (TRL's default, bf16 autocast) or bfloat16 (pure bf16)")
    parser.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.3)
    parser.add_argument("--no-vllm", action="store_true", help="generate with transformers (CPU smoke runs)")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args()
    samples = args.prompts * args.gens
    if samples % args.micro_batch:
        parser.error(f"--micro-batch {args.micro_batch} must divide prompts x gens = {samples}")
    if not (Path(args.model) / "config.json").exists():
        parser.error(f"--model {args.model}: no config.json; build it with `python benchmarks/reference_model.py DIR`")

    import torch
    import transformers
    import trl
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    train, _ = task_problems()
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in train], "answer": [p.answer for p in train]})
    clock, rows = PhaseClock(), []
    clock.install()
    scratch = tempfile.TemporaryDirectory(prefix="trl-grpo-")  # nothing is saved; the trainer wants a folder
    config = GRPOConfig(
        output_dir=scratch.name,
        max_steps=args.steps,
        per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=samples // args.micro_batch,  # one optimizer step per generation batch
        num_generations=args.gens,
        num_iterations=1,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        beta=0.0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        bf16=True,
        use_cpu=not torch.cuda.is_available(),
        model_init_kwargs={"dtype": args.model_dtype},
        gradient_checkpointing=False,
        use_vllm=not args.no_vllm,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        logging_steps=1,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=0,
    )
    start = time.perf_counter()
    trainer = GRPOTrainer(
        model=args.model,
        reward_funcs=length_reward_trl,
        args=config,
        train_dataset=dataset,
        callbacks=[make_callback(clock, rows)],
    )
    startup_s = time.perf_counter() - start
    trainer.train()

    summary = summarise(rows)
    print(f"\nTRL {trl.__version__} GRPOTrainer, medians over steps {summary['median_of_steps']} (seconds)")
    print("| " + " | ".join(p.removesuffix("_s") for p in PHASES) + " |\n|" + " --- |" * len(PHASES))
    print("| " + " | ".join(f"{summary[p]:.3f}" for p in PHASES) + " |")
    result = {
        "workload": {k: v for k, v in vars(args).items() if k != "json"},
        "startup_s": startup_s,
        "steps": rows,
        "median": summary,
        # the colocated vLLM's weights and KV cache included: they live in this process
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                     "vllm": getattr(sys.modules.get("vllm"), "__version__", None)},
    }
    print(f"startup (model load + vLLM start) {startup_s:.1f} s; peak GPU memory {result['peak_gpu_memory_gib']} GiB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
