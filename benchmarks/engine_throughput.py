"""Training engines side by side on the same batch: tokens/s, MFU and peak memory per engine.

    python -m benchmarks engines [options]      (the suite; or this module directly:)
    python -m benchmarks.engine_throughput [--shape qwen2.5-0.5b] [--layers N] [--engines automodel,fsdp]
        [--world-size 1] [--tp 1] [--batch 8] [--seq 1024] [--micro-batch 8] [--steps 5] [--packing]
        [--lora-rank R] [--lora-recompute] [--json PATH]

Each engine runs as the product runs it (a trainer group of Ray actors, one GPU per rank) on the
reference model's shape (benchmarks/reference_model.py, random weights), bf16 compute with fp32
master weights and AdamW (on a CPU: fp32 throughout), an SFT step (forward, backward, optimizer)
over `batch` sequences of `seq` random tokens. Step times are medians after one warm-up step; MFU
counts the model FLOPs of engines/flops.py against the card's dense bf16 peak. A table is printed
last; `--json` writes the figures to that file.
With `--lora-rank R` each engine trains LoRA adapters of rank R on the projections instead (the
base frozen in bf16); MFU then counts what LoRA computes (no base weight gradients:
engines/flops.py with weight_grads=False).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def batch_of(batch: int, seq: int, vocab: int):
    import torch
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.float32)
    mask[:, 0] = 0
    return TensorDict({"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(seq).expand(batch, seq).clone(),
                       "response_mask": mask}, batch_size=[batch])


def run_engine(name: str, model: str, args, batch, flops_per_token: float) -> dict:
    from engines import ENGINES
    from engines.base import EngineConfig, OptimConfig
    from engines.flops import peak_flops
    from rlhf.algos.losses import SFTLoss
    from rlhf.orchestration.worker_group import TrainerGroup

    from engines.base import LoraConfig

    lora = LoraConfig(args.lora_rank, 2.0 * args.lora_rank, ("*_proj",), args.lora_recompute) if args.lora_rank else None
    cfg = EngineConfig(dtype=args.dtype, micro_batch_size=args.micro_batch, max_grad_norm=1.0, seed=0,
                       trust_remote_code=False, tp_size=args.tp, packing=args.packing, lora=lora)
    t = time.perf_counter()
    group = TrainerGroup(args.world_size, ENGINES[name], model, cfg, trainable=True, num_cpus=1,
                         num_gpus=1 if args.gpus else 0, name=f"bench-{name}")
    start = time.perf_counter() - t
    try:
        group.all("configure_optimizer", OptimConfig(1e-6, 0.0, (0.9, 0.999), 0, args.steps + 1, "constant"))
        tokens = float(batch["response_mask"].sum())
        times = []
        for step in range(args.steps + 1):
            t = time.perf_counter()
            group.dp("train_step", batch, SFTLoss(), tokens)
            if step:  # the first step warms allocators and kernels up
                times.append(time.perf_counter() - t)
        stats = group.all("device_stats")
        counts = group.all("parameter_counts")[0]
    finally:
        group.shutdown()
    step = statistics.median(times)
    tok_s = batch["input_ids"].numel() / step
    peak = peak_flops(stats[0]["device"])
    return {
        "engine": name + (f"+lora{args.lora_rank}" if lora else "") + ("-recompute" if lora and lora.recompute else ""), "trainable_params": counts["trainable"],
        "world_size": args.world_size, "tp": args.tp, "start_s": round(start, 1),
        "step_s": round(step, 3), "tokens_per_s": round(tok_s), "device": stats[0]["device"],
        "mfu": round(flops_per_token * tok_s / (peak * args.world_size), 4) if peak else None,
        "peak_memory_gb": round(max(s["peak_memory_gb"] for s in stats), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--model", default=None, help="model folder (built there if missing; default: one per shape "
                    "under .work/benchmarks/models)")
    ap.add_argument("--engines", default="automodel,fsdp")
    ap.add_argument("--world-size", type=int, default=1)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (0: every weight)")
    ap.add_argument("--lora-recompute", action="store_true", help="LoRA recomputing activations in backward")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()

    import ray
    import torch
    from transformers import AutoConfig

    from benchmarks.reference_model import ensure
    from engines import ENGINES
    from engines.flops import train_flops_per_token

    args.gpus = torch.cuda.is_available()
    args.dtype = "bfloat16" if args.gpus else "float32"
    model = ensure(args.shape, args.layers, args.model)
    config = AutoConfig.from_pretrained(model)
    batch = batch_of(args.batch, args.seq, config.vocab_size)
    flops = train_flops_per_token(config, args.seq, weight_grads=not args.lora_rank)
    ray.init(num_cpus=max(2, args.world_size + 1), include_dashboard=False)
    rows = []
    try:
        for name in args.engines.split(","):
            if name not in ENGINES:
                print(f"engine {name!r} is not registered here (have: {', '.join(ENGINES)}); skipped", flush=True)
                continue
            if args.lora_rank and name != "automodel":
                print(f"engine {name!r} has no LoRA (Automodel's); skipped", flush=True)
                continue
            rows.append(run_engine(name, model, args, batch, flops))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    shape = f"{args.shape}{f' ({config.num_hidden_layers} layers)' if args.layers else ''}"
    summary = {"shape": shape, "batch": args.batch, "seq": args.seq, "micro_batch": args.micro_batch,
               "packing": args.packing, "dtype": args.dtype, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    print(f"\n{shape}, {args.batch} x {args.seq} tokens, {args.dtype}, world {args.world_size}, tp {args.tp}")
    print("| engine | step s | tokens/s | MFU | peak GiB | start s |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['engine']} | {r['step_s']} | {r['tokens_per_s']} | {r['mfu'] if r['mfu'] is not None else 'n/a'} | "
              f"{r['peak_memory_gb']} | {r['start_s']} |")
    if len(rows) == 2:
        print(f"{rows[0]['engine']} / {rows[1]['engine']} tokens/s: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
