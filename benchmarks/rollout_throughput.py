"""Generation throughput through our rollout engine against bare vLLM on the same requests, in one
process on one GPU (the same `LLM` object, so only our code around it differs).

    python -m benchmarks rollout [options]      (the suite; or this module directly:)
    python -m benchmarks.rollout_throughput MODEL_DIR [--prompts 64] [--n 8] [--tokens 256] [--repeat 3] [--json PATH]

Cases: bare `LLM.generate` with one unseeded SamplingParams; ours (`VLLMRollout.generate`: vLLM's
flat log-prob lists, the batch built with log-probs) unseeded; bare with one seeded SamplingParams
per prompt (what reproducible sampling costs inside vLLM); ours seeded per prompt (the product's
default). Each round runs every case once (in reverse order every other round), after a warm-up;
output tokens per second. A case's share of bare vLLM is the median of its per-round ratios against
the bare case of the same round sending the same requests, so a drift of the machine's speed
between rounds does not enter it; the lowest and highest ratios show the noise. Each round is
printed as it ends; `--json` writes the figures to that file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from benchmarks.reference_model import task_problems
    from rollout.base import Sampling
    from rollout.vllm_engine import VLLMConfig, VLLMRollout

    cuda = torch.cuda.is_available()
    engine = VLLMRollout(args.model, VLLMConfig(
        dtype="bfloat16" if cuda else "float32", tensor_parallel_size=1, max_model_len=64 + args.tokens,
        kv_cache_bytes=1 << 30, gpu_memory_utilization=args.gpu_memory_utilization, seed=0, enforce_eager=None,
        max_num_seqs=None, max_num_batched_tokens=None, weight_transport="object_store",
        trust_remote_code=False, gpu_share=1.0, ray_bundles=()))
    tok = AutoTokenizer.from_pretrained(args.model)
    train, _ = task_problems()
    prompts = [tok(p.prompt).input_ids for p in train[: args.prompts]]
    requests = [{"prompt_token_ids": p} for p in prompts]

    def params(seed):
        return SamplingParams(n=args.n, temperature=1.0, max_tokens=args.tokens, logprobs=0, detokenize=False, seed=seed)

    def bare(seeded: bool):
        outs = engine.llm.generate(requests, [params(7 + i) for i in range(len(prompts))] if seeded else params(None),
                                   use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    split: dict[str, list[float]] = {}

    def ours(seeded: bool):
        batch = engine.generate(prompts, Sampling(n=args.n, temperature=1.0, max_new_tokens=args.tokens,
                                                  seed=7 if seeded else None))
        if not seeded:
            for k, v in engine.timing.items():
                split.setdefault(k, []).append(v)
        return int(batch["response_mask"].sum())

    # each case, and the bare case that sends vLLM the same requests
    cases = {"bare vLLM, unseeded": (lambda: bare(False), "bare vLLM, unseeded"),
             "ours, unseeded": (lambda: ours(False), "bare vLLM, unseeded"),
             "bare vLLM, seeded per prompt": (lambda: bare(True), "bare vLLM, seeded per prompt"),
             "ours, seeded per prompt": (lambda: ours(True), "bare vLLM, seeded per prompt")}
    for fn, _ in cases.values():
        fn()  # warm-up (CUDA graphs, allocator)
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in cases}
    for r in range(args.repeat):  # round-robin, so a drift in the machine's speed touches every case alike
        for name, (fn, _) in (list(cases.items()) if r % 2 == 0 else list(cases.items())[::-1]):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            tokens = fn()
            if cuda:
                torch.cuda.synchronize()
            runs[name].append((time.perf_counter() - t, tokens))
        print(f"round {r + 1}: " + ", ".join(f"{name} {got[-1][1] / got[-1][0]:,.0f} tokens/s" for name, got in runs.items()),
              flush=True)

    def shares(name: str, like: str) -> list[float]:
        """tokens/s of `name` over `like`'s, round by round, sorted"""
        return sorted((n / t) / (bn / bt) for (t, n), (bt, bn) in zip(runs[name], runs[like]))

    phases = {k: statistics.median(v) for k, v in split.items()}
    rows = []
    for name, (_, like) in cases.items():
        got, same = runs[name], shares(name, like)
        secs = statistics.median(r[0] for r in got)
        rows.append({"case": name, "seconds": secs, "tokens_per_s": statistics.median(r[1] for r in got) / secs,
                     "vs_bare_unseeded": statistics.median(shares(name, "bare vLLM, unseeded")),
                     "vs_bare_same_requests": statistics.median(same), "lowest": same[0], "highest": same[-1]})
    if args.json:
        Path(args.json).write_text(json.dumps({
            "prompts": args.prompts, "n": args.n, "tokens": args.tokens, "repeat": args.repeat,
            "device": torch.cuda.get_device_name() if cuda else "cpu", "ours_unseeded_phases_s": phases, "cases": rows,
            "rounds": {name: [{"seconds": t, "tokens": n} for t, n in got] for name, got in runs.items()}}, indent=2))
    print(f"\n{args.prompts} prompts x {args.n} samples x up to {args.tokens} tokens, median of {args.repeat}")
    print("ours, unseeded, by phase (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    print("| case | seconds | output tokens/s | vs bare unseeded | vs bare, same requests: median | lowest | highest |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['case']} | {r['seconds']:.3f} | {r['tokens_per_s']:,.0f} | {r['vs_bare_unseeded']:.1%} "
              f"| {r['vs_bare_same_requests']:.1%} | {r['lowest']:.1%} | {r['highest']:.1%} |")


if __name__ == "__main__":
    main()
