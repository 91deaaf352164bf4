"""One weight push through the product path (`Roles.sync_weights`), its GB/s, where its time
goes, and whether vLLM then scores like the trainer.

    python -m benchmarks push [options]      (the suite; or this module directly:)
    python -m benchmarks.weight_push [--model DIR] [--mode ipc|nccl|tp2] [--reps 5] [--prompts 64] [--tokens 32]
        [--more-buckets BYTES,...] [--json PATH] [key=value ...]

ipc:  one GPU: the trainer (one rank) and one vLLM engine share it in separate processes
      (colocated; the transport `auto` picks: CUDA IPC). Target: a push of 20 ms or less.

nccl: the trainer (one rank) on GPU 0 and one vLLM engine on GPU 1 (`rollout.placement=
      disaggregated`, the transport `auto` picks: NCCL). Against it, a plain NCCL broadcast of the
      same bytes between the same two processes, over the same communicator.
tp2:  a 2-rank trainer and one vLLM engine with tensor_parallel_size=2 sharing the two GPUs
      (colocated; the transport `auto` picks: CUDA IPC, each TP worker maps the handles on its GPU).

The model is the Qwen2.5-0.5B-shaped reference model (benchmarks/reference_model.py) in bf16 on
both sides. After two warm-up pushes (the first records the load plan of rollout/load_plan.py,
so the timed ones replay it) the engine's weights are scaled by 0.5 inside vLLM, so the log-prob
check shows the timed pushes landing: mean |log-prob difference| vLLM vs trainer on sampled
responses, with the scrambled weights and after the push. Also printed: the last push's timeline
(the sender's copies, calls and waits, and each engine call's span, in ms from the push's start;
CUDA IPC), the round trip of an empty Ray call from the trainer to the engine, and with
`--more-buckets` the push again for each of those bucket sizes (new buffers, two warm-ups each).
A short table is printed last; `--json` writes the figures to that file.
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

MODES = {
    "ipc": ["actor.world_size=1", "actor.num_gpus_per_worker=0.5", "rollout.num_gpus=0.5",
            "rollout.placement=colocated", "rollout.gpu_memory_utilization=0.3"],
    "nccl": ["actor.world_size=1", "actor.num_gpus_per_worker=1", "rollout.num_gpus=1",
             "rollout.placement=disaggregated", "rollout.gpu_memory_utilization=0.5"],
    "tp2": ["actor.world_size=2", "actor.num_gpus_per_worker=0.5", "rollout.num_gpus=0.5",
            "rollout.tensor_parallel_size=2", "rollout.placement=colocated", "rollout.gpu_memory_utilization=0.3"],
}
COMMON = ["sft.steps=0", "actor.dtype=bfloat16", "rollout.dtype=bfloat16", "rollout.max_model_len=512",
          "actor.micro_batch_size=32", "rollout.enforce_eager=true"]  # eager: a faster start, same push


def _scramble(worker) -> None:
    """In each vLLM worker: halve every weight (a model unlike the trainer's)."""
    import torch

    with torch.no_grad():
        for p in worker.model_runner.model.parameters():
            p.mul_(0.5)


def _send_plain(trainer_worker, nbytes: int, reps: int) -> list[float]:
    """In trainer rank 0: broadcast `nbytes` on the push's own NCCL communicator, timed."""
    import torch

    buf = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    group, times = trainer_worker.sender.group, []
    for _ in range(reps + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        group.broadcast(buf, src=0, stream=torch.cuda.current_stream())
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times[1:]  # the first one warms NCCL up


def _receive_plain(vllm_worker, nbytes: int, reps: int) -> None:
    import torch

    group = vllm_worker.weight_transfer_engine.model_update_group
    buf = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    for _ in range(reps + 1):
        group.broadcast(buf, src=0, stream=torch.cuda.current_stream())
        torch.cuda.synchronize()


def _export_only(trainer_worker) -> float:
    """In a trainer rank: the export alone (every full tensor produced, cast unless the transport casts
    as it copies, nothing sent), timed."""
    import torch

    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in trainer_worker.engine.export_weights(trainer_worker.sender.export_dtype):
        pass
    torch.cuda.synchronize()
    return time.perf_counter() - t


def _round_trip(trainer_worker, reps: int = 20) -> float:
    """In trainer rank 0: the median time of an empty call to the first rollout engine and back."""
    import ray

    engine, times = trainer_worker.sender.receivers[0], []
    for _ in range(reps + 1):
        t = time.perf_counter()
        ray.get(engine.__ray_call__.remote(_nothing))
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def _nothing(worker) -> None:
    return None


def _new_buckets(trainer_worker, nbytes: int) -> None:
    """In a trainer rank: the sender's buffers dropped, so the next push makes buffers of `nbytes`."""
    trainer_worker.sender.bucket_bytes = nbytes
    if hasattr(trainer_worker.sender, "buffers"):
        trainer_worker.sender.buffers, trainer_worker.sender.handles, trainer_worker.sender.views = [], [], []


def _timeline(roles) -> list[tuple[str, float, float]]:
    """The last push as (what, start ms, end ms) from its start: rank 0's sender events, then each
    call on the first rollout engine."""
    import ray

    events = ray.get(roles.actor.workers[0].__ray_call__.remote(lambda w: getattr(w.sender, "events", [])))
    if not events:
        return []
    spans = ray.get(roles.rollout.workers[0].__ray_call__.remote(lambda w: w.push_spans))
    t0 = events[0][1]
    return [(what, (a - t0) * 1e3, (b - t0) * 1e3) for what, a, b in events] + \
        [("engine call", (a - t0) * 1e3, (b - t0) * 1e3) for a, b in spans]


def _push_timing(vllm_worker) -> dict:
    """In a vLLM worker: its loads' time so far, by phase (rollout/worker_extension.py)."""
    return dict(getattr(vllm_worker, "push_timing", {}))


def _replayed(vllm_worker) -> int | None:
    """In a vLLM worker: loads done by replaying a recorded plan (rollout/load_plan.py)."""
    replay = getattr(vllm_worker, "_replay", None)
    return None if replay is None else replay.replayed


def _logprob_gap(roles, prompts, tokens: int) -> float:
    import torch

    from rollout.base import Sampling

    batch = roles.rollout.generate(prompts, Sampling(n=4, temperature=1.0, max_new_tokens=tokens, seed=0))
    trainer = torch.cat(roles.actor.dp("logprobs", batch))
    mask = batch["response_mask"].bool()
    return float((batch["rollout_logprobs"] - trainer)[mask].abs().mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="the model folder (default: the reference model, built under "
                    ".work/benchmarks/models if missing)")
    ap.add_argument("--mode", choices=sorted(MODES), default="nccl")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=64, help="prompts (x4 samples) of the log-prob check")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per sample in the log-prob check")
    ap.add_argument("--more-buckets", default="", help="bucket sizes in bytes to time the push with as well")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args, overrides = ap.parse_known_args()

    import ray
    from transformers import AutoTokenizer

    from benchmarks.reference_model import ensure, task_problems
    from rlhf.config import load_config
    from rlhf.orchestration.pipeline import _start_ray
    from rlhf.orchestration.roles import start_roles

    args.model = ensure(folder=args.model)
    cfg = load_config([f"model.path={args.model}", *COMMON, *MODES[args.mode], *overrides])
    tok = AutoTokenizer.from_pretrained(args.model)
    train, _ = task_problems()
    prompts = [tok(p.prompt).input_ids for p in train[: args.prompts]]
    _start_ray(cfg)
    result: dict = {"mode": args.mode, "overrides": MODES[args.mode] + overrides}
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[weight_push {time.perf_counter() - t0:6.1f} s] {msg}", flush=True)

    try:
        roles = start_roles(cfg, args.model, tok.eos_token_id)
        say("roles started")
        result["transport"] = ray.get(roles.rollout.workers[0].__ray_call__.remote(
            lambda w: type(w.receiver).__name__))
        for _ in range(2):  # warm-up pushes; the first records the load plan, the timed ones replay it
            roles.sync_weights()
        ray.get([w.__ray_call__.remote(lambda w: w.engine.llm.collective_rpc(_scramble)) for w in roles.rollout.workers])
        result["logprob_gap_scrambled"] = _logprob_gap(roles, prompts, args.tokens)
        say(f"vLLM weights halved: mean |dlogp| {result['logprob_gap_scrambled']:.4f}")
        times, phases = [], []

        def worker_timing() -> dict:
            (per_worker,) = ray.get([w.__ray_call__.remote(lambda w: w.engine.llm.collective_rpc(_push_timing))
                                     for w in roles.rollout.workers[:1]])
            return per_worker[0]

        for _ in range(args.reps):
            before = worker_timing()
            t = time.perf_counter()
            sent = roles.sync_weights()
            times.append(time.perf_counter() - t)
            after = worker_timing()
            phases.append({
                "engine_busy_s": max(ray.get([w.__ray_call__.remote(lambda w: w.receiver.busy_s)
                                              for w in roles.rollout.workers])),
                **{f"worker_{k}": after[k] - before.get(k, 0.0) for k in after},
                **ray.get(roles.actor.workers[0].__ray_call__.remote(lambda w: getattr(w.sender, "timing", {}))),
                "export_only_s": max(ray.get([w.__ray_call__.remote(_export_only) for w in roles.actor.workers])),
            })
        say(f"pushes (s): {', '.join(f'{t:.4f}' for t in times)}")
        result["replayed_loads"] = ray.get([w.__ray_call__.remote(lambda w: w.engine.llm.collective_rpc(_replayed))
                                            for w in roles.rollout.workers])
        result["phases"] = phases
        result["phase_medians_s"] = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
        say(f"phase medians (s): {result['phase_medians_s']}")
        result["logprob_gap_after_push"] = _logprob_gap(roles, prompts, args.tokens)
        say(f"after the push: mean |dlogp| {result['logprob_gap_after_push']:.4f}")
        push = statistics.median(times)
        result.update(bytes=sent, push_s=push, push_gb_s=sent / push / 1e9, push_times_s=times)
        result["timeline_ms"] = _timeline(roles)
        for what, a, b in result["timeline_ms"]:
            say(f"last push: {what:12s} {a:7.2f} -> {b:7.2f} ms")
        result["head_sent"] = ray.get(roles.actor.workers[0].__ray_call__.remote(
            lambda w: "lm_head.weight" in w.sender.names))
        result["round_trip_s"] = ray.get(roles.actor.workers[0].__ray_call__.remote(_round_trip))
        result["more_buckets"] = []
        for nbytes in [int(x) for x in args.more_buckets.split(",") if x]:
            ray.get([w.__ray_call__.remote(_new_buckets, nbytes) for w in roles.actor.workers])
            for _ in range(2):
                roles.sync_weights()
            ray.get([w.__ray_call__.remote(lambda w: w.engine.llm.collective_rpc(_scramble)) for w in roles.rollout.workers])
            again = []
            for _ in range(args.reps):
                t = time.perf_counter()
                roles.sync_weights()
                again.append(time.perf_counter() - t)
            row = {"bucket_bytes": nbytes, "push_s": statistics.median(again), "push_times_s": again,
                   "buffers": ray.get(roles.actor.workers[0].__ray_call__.remote(lambda w: len(getattr(w.sender, "buffers", [])))),
                   "logprob_gap_after_push": _logprob_gap(roles, prompts, args.tokens), "timeline_ms": _timeline(roles)}
            result["more_buckets"].append(row)
            say(f"buckets of {nbytes} B: pushes (s) {', '.join(f'{t:.4f}' for t in again)}, gap {row['logprob_gap_after_push']:.4f}")
            for what, a, b in row["timeline_ms"]:
                say(f"last push: {what:12s} {a:7.2f} -> {b:7.2f} ms")
        if result["transport"] == "NcclReceiver":
            recv = roles.rollout.workers[0].__ray_call__.remote(
                lambda w, n, k: w.engine.llm.collective_rpc(_receive_plain, args=(n, k)), sent, args.reps)
            plain = ray.get(roles.actor.workers[0].__ray_call__.remote(_send_plain, sent, args.reps))
            ray.get(recv)
            result.update(plain_s=statistics.median(plain), plain_gb_s=sent / statistics.median(plain) / 1e9,
                          plain_times_s=plain)
            result["push_vs_plain"] = result["plain_s"] / push
    finally:
        ray.shutdown()
    rows = [("transport", result["transport"]), ("bytes pushed", f"{result['bytes'] / 1e9:.3f} GB"),
            ("push (Roles.sync_weights), median", f"{result['push_s'] * 1e3:.1f} ms, {result['push_gb_s']:.1f} GB/s")]
    rows += [(f"  of which {k.removesuffix('_s')}", f"{v * 1e3:.1f} ms") for k, v in result["phase_medians_s"].items()]
    rows += [("loads replayed per vLLM worker (rollout/load_plan.py)", str(result["replayed_loads"])),
             ("tied head sent (vLLM does not use the embedding as its head)", str(result["head_sent"])),
             ("empty Ray call trainer -> engine and back, median", f"{result['round_trip_s'] * 1e3:.2f} ms")]
    rows += [(f"push in {r['bucket_bytes'] / 2**20:.0f} MiB buckets ({r['buffers']} buffers), median",
              f"{r['push_s'] * 1e3:.1f} ms, {result['bytes'] / r['push_s'] / 1e9:.1f} GB/s, gap after "
              f"{r['logprob_gap_after_push']:.4f}") for r in result["more_buckets"]]
    if "plain_s" in result:
        rows += [("plain NCCL broadcast, median", f"{result['plain_s'] * 1e3:.1f} ms, {result['plain_gb_s']:.1f} GB/s"),
                 ("push speed / plain broadcast", f"{result['push_vs_plain']:.0%} (target >= 70%)")]
    rows += [("mean |dlogp| vLLM vs trainer, scrambled", f"{result['logprob_gap_scrambled']:.4f}"),
             ("mean |dlogp| vLLM vs trainer, after push", f"{result['logprob_gap_after_push']:.4f} (target <= 1e-2)")]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"\n| {args.mode} | |\n| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
