"""Multi-turn rollouts with a slow tool: N trajectories of 3 calls each of a tool that sleeps 1 s,
on one rollout engine. A serial loop would spend N x 3 s in the tool alone; the rollout layer
runs trajectories concurrently (`agent.max_in_flight`, `agent.tool_workers`), so the wall time
beyond the engine's own busy time is what concurrency leaves of it.

    python benchmarks/agent_concurrency.py MODEL_DIR [--trajectories 64] [--json PATH]

MODEL_DIR: a model with a chat template (on CPU the tiny chat model the tests build); the
model's output does not matter (the environment calls the tool whatever it writes). On a GPU the
engine's busy share of the wall time is the GPU's (1 - idle share).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(model: str, trajectories: int = 64, workers: int = 64, max_new_tokens: int = 8) -> dict:
    import torch

    from rollout.base import Sampling
    from rollout.trajectory import AgentConfig
    from rollout.vllm_engine import VLLMConfig, VLLMRollout

    cuda = torch.cuda.is_available()
    engine = VLLMRollout(model, VLLMConfig(
        dtype="bfloat16" if cuda else "float32", tensor_parallel_size=1, max_model_len=128, kv_cache_bytes=256 << 20,
        gpu_memory_utilization=0.3, seed=0, enforce_eager=None, max_num_seqs=None, max_num_batched_tokens=None,
        weight_transport="object_store", trust_remote_code=False, gpu_share=1.0, ray_bundles=()))
    env = f"{ROOT / 'benchmarks' / 'agent_envs.py'}:SleepyTool"
    agent = AgentConfig(env=env, tool_parser="hermes", max_turns=4, tool_timeout_s=30.0, max_tool_output_chars=100,
                        tool_workers=workers, max_in_flight=trajectories)
    # a random model's turns run to the per-turn limit; the environment calls the tool after each
    sampling = Sampling(n=1, temperature=1.0, max_new_tokens=max_new_tokens, seed=0)
    rows = [{"prompt": f"{i}*{i}", "answer": str(i * i)} for i in range(trajectories)]
    engine.trajectories(rows[:2], sampling, agent)  # warm-up: workers, compile
    busy, t = engine.requests.busy_s, time.perf_counter()
    got = engine.trajectories(rows, sampling, agent)
    wall, busy = time.perf_counter() - t, engine.requests.busy_s - busy
    calls = got.stats["agent/tool_calls_mean"] * trajectories
    tool_calls = sum(1 for convo in got.messages for m in convo if m["role"] == "tool")
    return {"trajectories": trajectories, "tool_calls": tool_calls, "tool_seconds_serial": tool_calls * 1.0,
            "wall_s": wall, "engine_busy_s": busy, "beyond_generation_s": wall - busy,
            "engine_busy_share": busy / wall, "trajectories_per_s": trajectories / wall,
            "parsed_calls": calls, "device": torch.cuda.get_device_name() if cuda else "cpu"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--trajectories", type=int, default=64)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    r = run(args.model, args.trajectories, args.workers)
    r["tool_seconds_serial"] = r["tool_calls"] * 1.0
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    print(f"\n{r['trajectories']} trajectories x 3 calls of a tool that sleeps 1 s, on {r['device']}")
    print("| tool calls | serial tool time | wall time | engine busy | beyond generation | trajectories/s |\n"
          "| --- | --- | --- | --- | --- | --- |")
    print(f"| {r['tool_calls']} | {r['tool_seconds_serial']:.0f} s | {r['wall_s']:.2f} s | {r['engine_busy_s']:.2f} s "
          f"| {r['beyond_generation_s']:.2f} s | {r['trajectories_per_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
