"""Where one training step's time goes: an engine in this process (no Ray), the reference
workload's train batch, timed, then one step under the PyTorch profiler.

    python -m benchmarks train-profile [options]      (the suite; or this module directly:)
    python -m benchmarks.train_profile MODEL_DIR [--engine automodel|fsdp] [--rows 512] [--prompt 20]
        [--response 256] [--micro-batch 32] [--max-tokens N] [--packing] [--steps 3] [--no-profile] [--host-top K]
        [--automodel-backend KEY=VALUE,...] [--json PATH]

The batch is what one GRPO step of the reference workload trains on (64 prompts x 8 samples of a
`prompt`-token prompt and a `response`-token response, random token ids) with the SFT loss (the
same forward and backward as the policy loss: log-probs of the response tokens). Printed: the
median step, the GPU's busy time within the profiled step (the sum of its kernels) against the
wall time, and the operators whose kernels took the most GPU time, so a step that waits on the host shows
as busy time well under the wall time. With `--host-top K`, one more step runs under cProfile and the K
Python functions with the most time of their own are printed: where the host's time goes.
`--automodel-backend` (an experiment; the product does not take it yet) builds Automodel's model
classes with these fields of its `BackendConfig` (e.g. `rms_norm=torch`). `--json` writes the figures to
that file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rl_batch(rows: int, prompt: int, response: int, vocab: int):
    import torch
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(0)
    width = prompt + response
    mask = torch.zeros(rows, width, dtype=torch.float32)
    mask[:, prompt:] = 1
    return TensorDict({"input_ids": torch.randint(0, vocab, (rows, width), generator=g),
                       "attention_mask": torch.ones(rows, width, dtype=torch.long),
                       "position_ids": torch.arange(width).expand(rows, width).clone(),
                       "response_mask": mask}, batch_size=[rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--engine", default="automodel")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=20)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--host-top", type=int, default=0)
    ap.add_argument("--automodel-backend", default="")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()

    import torch
    from torch.distributed.elastic.utils.distributed import get_free_port
    from transformers import AutoConfig

    from engines import ENGINES
    from engines.base import EngineConfig, OptimConfig
    from engines.flops import peak_flops, train_flops_per_token
    from rlhf.algos.losses import SFTLoss
    from rlhf.orchestration.workers import load_object

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(get_free_port()))
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    cuda = torch.cuda.is_available()
    cfg = EngineConfig(dtype="bfloat16" if cuda else "float32", micro_batch_size=args.micro_batch, max_grad_norm=1.0,
                       seed=0, trust_remote_code=False, packing=args.packing,
                       max_tokens_per_micro_batch=args.max_tokens)
    if args.automodel_backend:
        import functools

        from nemo_automodel import NeMoAutoModelForCausalLM

        backend = dict(kv.split("=", 1) for kv in args.automodel_backend.split(","))
        NeMoAutoModelForCausalLM.from_pretrained = functools.partial(NeMoAutoModelForCausalLM.from_pretrained,
                                                                     backend=backend)
    t = time.perf_counter()
    engine = load_object(ENGINES[args.engine])(args.model, cfg, True, "lm")
    engine.configure_optimizer(OptimConfig(1e-6, 0.0, (0.9, 0.999), 0, 100, "constant"))
    start = time.perf_counter() - t
    config = AutoConfig.from_pretrained(args.model)
    batch = rl_batch(args.rows, args.prompt, args.response, config.vocab_size)
    tokens = float(batch["response_mask"].sum())

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        engine.train_step(batch, SFTLoss(), tokens)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t

    step()  # warm-up: allocator, kernels
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(args.steps)]
    med = statistics.median(times)
    width = args.prompt + args.response
    tok_s = args.rows * width / med
    peak = peak_flops(torch.cuda.get_device_name()) if cuda else None
    result = {
        "engine": args.engine, "automodel_backend": args.automodel_backend, "model_class": type(engine.model).__name__,
        "attn": getattr(engine.model.config, "_attn_implementation", None), "rows": args.rows, "width": width,
        "micro_batch": args.micro_batch, "max_tokens": args.max_tokens, "packing": args.packing,
        "start_s": round(start, 1), "step_s": round(med, 4), "steps_s": [round(x, 4) for x in times],
        "tokens_per_s": round(tok_s),
        "mfu": round(train_flops_per_token(config, width) * tok_s / peak, 4) if peak else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    print(json.dumps(result), flush=True)
    if not args.no_profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            wall = step()
        from torch.autograd import DeviceType

        events = prof.key_averages()
        attr = "self_device_time_total" if cuda else "self_cpu_time_total"
        # The GPU's busy time is the sum of its kernels; each operator row (a host-side event)
        # carries the time of the kernels it launched, so rows are ranked by that.
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        ops = [e for e in events if e.device_type == DeviceType.CPU]
        busy = sum(getattr(e, attr) for e in (kernels if cuda else ops)) / 1e6
        result.update(profiled_wall_s=round(wall, 4), device_busy_s=round(busy, 4),
                      kernel_launches=sum(e.count for e in kernels))
        result["top_ops"] = [{"op": e.key, "calls": e.count, "self_s": round(getattr(e, attr) / 1e6, 4)}
                             for e in sorted(ops, key=lambda e: -getattr(e, attr))[: args.top]]
        print(f"\nprofiled step: wall {wall:.3f} s, {'GPU' if cuda else 'CPU'} busy {busy:.3f} s, "
              f"{result['kernel_launches']} kernels")
        print("| op | calls | self s | share of busy |\n| --- | --- | --- | --- |")
        for r in result["top_ops"]:
            print(f"| {r['op'][:60]} | {r['calls']} | {r['self_s']:.4f} | {r['self_s'] / max(busy, 1e-9):.1%} |")
    if args.host_top:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        wall = step()
        prof.disable()
        stats = pstats.Stats(prof)
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[: args.host_top]  # by own time
        result["host_top"] = [{"function": f"{Path(f).name}:{line}:{fn}", "calls": nc, "own_s": round(tt, 4),
                               "cumulative_s": round(ct, 4)} for (f, line, fn), (_, nc, tt, ct, _) in rows]
        print(f"\nstep under cProfile: wall {wall:.3f} s (the profiler's own cost included)")
        print("| function | calls | own s | cumulative s |\n| --- | --- | --- | --- |")
        for r in result["host_top"]:
            print(f"| {r['function'][:70]} | {r['calls']} | {r['own_s']:.4f} | {r['cumulative_s']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"\n| engine | class | attn | micro-batch | step s | tokens/s | MFU | peak GiB |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.engine} {args.automodel_backend} | {result['model_class']} | {result['attn']} | {args.micro_batch} | {result['step_s']} | "
          f"{result['tokens_per_s']} | {result['mfu']} | {result['peak_memory_gb']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
