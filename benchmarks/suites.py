"""The suites of `python -m benchmarks`. Each runs benchmark modules of this folder as child
processes (engine_throughput, train_profile, weight_push, rollout_throughput, reference_workload,
vs_trl/run_trl) or calls them in-process (config_errors, algos_table), and sums their figures up
in a short table. Models are the reference model's shapes (reference_model.py), built once under
.work/benchmarks/models."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.runner import ROOT, CannotRun, Context, gpu_count, need_gpus


@dataclass
class Suite:
    name: str
    purpose: str  # one line, for --list
    details: str  # --help: what it runs and needs
    timeout: float  # seconds a run may take, by default
    options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Context, argparse.Namespace], None]
    overrides: bool = False  # takes key=value overrides of the product's config

    def parser(self) -> argparse.ArgumentParser:
        ap = argparse.ArgumentParser(prog=f"python -m benchmarks {self.name}", description=f"{self.purpose}.\n\n{self.details}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--out", help="folder for the figures and logs (default: .work/benchmarks/<suite>-<date>-<time>)")
        ap.add_argument("--timeout", type=float, default=self.timeout,
                        help="seconds each run may take before it is stopped (default %(default).0f)")
        self.options(ap)
        if self.overrides:
            ap.add_argument("overrides", nargs="*", metavar="key=value",
                            help="overrides of the product's config, given to every run")
        return ap

    def parse(self, argv: list[str]) -> argparse.Namespace:
        ap = self.parser()
        args = ap.parse_args(argv)
        for item in getattr(args, "overrides", []):
            if "=" not in item:
                ap.error(f"{item!r} is neither an option nor a key=value override")
        return args


def pct(x) -> str | None:
    return None if x is None else f"{x:.1%}"


def ms(x) -> str | None:
    return None if x is None else f"{x * 1e3:.1f}"


def num(x, digits: int = 3) -> str | None:
    return None if x is None else f"{x:.{digits}f}"


def shape_option(ap: argparse.ArgumentParser) -> None:
    from benchmarks.reference_model import SHAPES

    ap.add_argument("--shape", choices=sorted(SHAPES), default=None,
                    help="the reference model's shape (default: qwen2.5-0.5b with a GPU, tiny without)")


def resolve_shape(a: argparse.Namespace, what: str) -> None:
    """Default the shape to the machine; on a CPU only the tiny shape runs."""
    gpus = gpu_count()
    a.shape = a.shape or ("qwen2.5-0.5b" if gpus else "tiny")
    if not gpus and a.shape != "tiny":
        raise CannotRun(f"{what} on the {a.shape} shape needs a CUDA GPU; this machine has none. On a CPU: --shape tiny.")


def tiny(a: argparse.Namespace, value, on_tiny, default):
    """An option's value: given, or the tiny shape's default, or the default."""
    return value if value is not None else (on_tiny if a.shape == "tiny" else default)


def model(shape: str, layers: int | None = None, chat: bool = False) -> str:
    """The reference model of this shape, built first if missing (not counted in any run's time)."""
    from benchmarks.reference_model import ensure, models_dir

    name = shape + (f"-{layers}-layers" if layers else "") + ("-chat" if chat else "")
    if not (models_dir() / name / "config.json").is_file():
        print(f"[benchmarks] building the {name} reference model under {models_dir()}", flush=True)
    return ensure(shape, layers, chat=chat)


def no_figures(ctx: Context, rec: dict) -> None:
    ctx.note(f"{rec['name']}: no figures (exit code {rec['rc']}; log: {ctx.out / rec['log']})")


# ---- engines -------------------------------------------------------------------------------

def engine_batch_options(ap):
    """The options of the engines benchmark a LoRA comparison shares."""
    shape_option(ap)
    ap.add_argument("--layers", type=int, help="fewer decoder layers than the shape has (a model too large for the cards)")
    ap.add_argument("--engines", default="automodel,fsdp", help="comma-separated (default %(default)s)")
    ap.add_argument("--world-size", type=int, default=1, help="trainer ranks, one GPU each (default 1)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks per replica (default 1)")
    ap.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    ap.add_argument("--seq", type=int, help="tokens per sequence (default 1024; 256 on the tiny shape)")
    ap.add_argument("--micro-batch", type=int, default=8, help="sequences per forward (default 8)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up (default 5)")
    ap.add_argument("--packing", action="store_true", help="pack each micro-batch's sequences into one row")


def engines_options(ap):
    engine_batch_options(ap)
    ap.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (Automodel only)")
    ap.add_argument("--lora-recompute", action="store_true", help="LoRA recomputing activations in backward")


def engines_check(a) -> None:
    resolve_shape(a, "the engines suite")
    if gpu_count():
        need_gpus(a.world_size, f"--world-size {a.world_size}")


def engines_step(ctx: Context, a, name: str) -> dict:
    argv = ["-m", "benchmarks.engine_throughput", "--model", model(a.shape, a.layers), "--shape", a.shape,
            "--engines", a.engines, "--world-size", str(a.world_size), "--tp", str(a.tp), "--batch", str(a.batch),
            "--seq", str(tiny(a, a.seq, 256, 1024)), "--micro-batch", str(a.micro_batch), "--steps", str(a.steps),
            "--lora-rank", str(a.lora_rank)] + (["--layers", str(a.layers)] if a.layers else []) \
        + (["--packing"] if a.packing else []) + (["--lora-recompute"] if a.lora_recompute else [])
    return ctx.step(name, argv)


ENGINE_HEADERS = ["engine", "world", "tp", "step s", "tokens/s", "MFU", "peak GiB", "trainable params", "start s"]


def engine_row(r: dict) -> list:
    return [r["engine"], r["world_size"], r["tp"], r["step_s"], f"{r['tokens_per_s']:,}", pct(r["mfu"]),
            r["peak_memory_gb"] if r["device"] != "cpu" else None, f"{r['trainable_params'] / 1e6:.1f}M", r["start_s"]]


def run_engines(ctx: Context, a) -> None:
    engines_check(a)
    rec = engines_step(ctx, a, "engines")
    if not rec["figures"]:
        return no_figures(ctx, rec)
    f = rec["figures"]
    rows = f["rows"]
    ctx.table(f"training engines: {f['shape']}, {f['batch']} x {f['seq']} tokens, micro-batch {f['micro_batch']}, "
              f"{f['dtype']}{', packed' if f['packing'] else ''}; median of {a.steps} steps",
              ENGINE_HEADERS, [engine_row(r) for r in rows])
    if len(rows) == 2:
        ctx.note(f"{rows[0]['engine']} / {rows[1]['engine']} tokens/s: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.3f}")


# ---- train-profile -------------------------------------------------------------------------

def profile_options(ap):
    shape_option(ap)
    ap.add_argument("--engines", default="automodel,fsdp", help="one run each, in this order, comma-separated; an "
                    "engine may come again (default %(default)s)")
    ap.add_argument("--automodel-backend", default="", metavar="KEY=VALUE,...",
                    help="one more Automodel run, its model built with these BackendConfig fields (e.g. rms_norm=torch)")
    ap.add_argument("--rows", type=int, help="rows of the batch (default 512, the reference workload's; 32 on tiny)")
    ap.add_argument("--micro-batch", type=int, help="rows per forward (default 32; 16 on tiny)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after a warm-up (default 3)")
    ap.add_argument("--top", type=int, default=16, help="operators listed from the profiled step (default 16)")
    ap.add_argument("--host-top", type=int, default=0, help="one more step under cProfile: this many Python functions")
    ap.add_argument("--no-profile", action="store_true", help="timed steps only")
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--max-tokens", type=int, help="a token budget per micro-batch instead of --micro-batch rows")


def run_profile(ctx: Context, a) -> None:
    resolve_shape(a, "the train-profile suite")
    path = model(a.shape)
    runs = [(e, "") for e in a.engines.split(",")] + ([("automodel", a.automodel_backend)] if a.automodel_backend else [])
    rows = []
    for i, (engine, backend) in enumerate(runs):
        argv = ["-m", "benchmarks.train_profile", path, "--engine", engine, "--rows", str(tiny(a, a.rows, 32, 512)),
                "--micro-batch", str(tiny(a, a.micro_batch, 16, 32)), "--steps", str(a.steps), "--top", str(a.top),
                "--host-top", str(a.host_top)] + (["--no-profile"] if a.no_profile else []) \
            + (["--packing"] if a.packing else []) + (["--max-tokens", str(a.max_tokens)] if a.max_tokens else []) \
            + (["--automodel-backend", backend] if backend else [])
        name = f"train-profile-{engine}{'-backend' if backend else ''}"
        rec = ctx.step(name + (f"-{i + 1}" if any(r["name"] == name for r in ctx.runs) else ""), argv)
        f = rec["figures"]
        if not f:
            no_figures(ctx, rec)
            continue
        rows.append([engine + (f" ({backend})" if backend else ""), f["model_class"], f["micro_batch"], f["step_s"],
                     f"{f['tokens_per_s']:,}", pct(f["mfu"]), f["peak_memory_gb"],
                     f"{f['device_busy_s']:.3f} / {f['profiled_wall_s']:.3f}" if "device_busy_s" in f else None,
                     f.get("kernel_launches") or None])
    if rows:
        ctx.table(f"train step: {a.shape} shape, {tiny(a, a.rows, 32, 512)} rows x 276 tokens; median of {a.steps} steps "
                  "(operators and host functions: runs/*.log and the JSON)",
                  ["engine", "model class", "micro-batch", "step s", "tokens/s", "MFU", "peak GiB",
                   "busy / wall s (profiled step)", "kernels"], rows)


# ---- push ----------------------------------------------------------------------------------

PUSH_GPUS = {"ipc": 1, "nccl": 2, "tp2": 2}


def push_options(ap):
    ap.add_argument("--modes", default="ipc", help="comma-separated: ipc (one GPU, colocated), nccl (disaggregated over "
                    "two GPUs), tp2 (a 2-rank trainer and vLLM TP=2 on two GPUs) (default %(default)s)")
    ap.add_argument("--reps", type=int, default=5, help="timed pushes (default 5)")
    ap.add_argument("--more-buckets", default="", metavar="BYTES,...", help="bucket sizes to time the push with as well")
    ap.add_argument("--prompts", type=int, default=64, help="prompts (x4 samples) of the log-prob check (default 64)")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per sample of the log-prob check (default 32)")


def push_check(a) -> list[str]:
    modes = a.modes.split(",")
    unknown = [m for m in modes if m not in PUSH_GPUS]
    if unknown:
        raise CannotRun(f"--modes: {', '.join(unknown)} is not one of {', '.join(PUSH_GPUS)}")
    need_gpus(max(PUSH_GPUS[m] for m in modes), f"the push suite with --modes {a.modes}")
    return modes


def push_rows(ctx: Context, a, modes: list[str]) -> list[list]:
    path, rows = model("qwen2.5-0.5b"), []
    for mode in modes:
        argv = ["-m", "benchmarks.weight_push", "--model", path, "--mode", mode, "--reps", str(a.reps),
                "--prompts", str(a.prompts), "--tokens", str(a.tokens)] \
            + (["--more-buckets", a.more_buckets] if a.more_buckets else []) + a.overrides
        rec = ctx.step(f"push-{mode}", argv)
        f = rec["figures"]
        if not f:
            no_figures(ctx, rec)
            continue
        ph = f["phase_medians_s"]
        rows.append([mode, f["transport"], f"{f['bytes'] / 1e9:.3f}", ms(f["push_s"]), f"{f['push_gb_s']:.1f}",
                     ms(ph.get("export_only_s")), ms(ph.get("engine_busy_s")), ms(f.get("plain_s")),
                     f"{f['logprob_gap_scrambled']:.4f} -> {f['logprob_gap_after_push']:.4f}"])
        rows += [[f"{mode}, {b['bucket_bytes'] / 2**20:.0f} MiB buckets", f["transport"], f"{f['bytes'] / 1e9:.3f}",
                  ms(b["push_s"]), f"{f['bytes'] / b['push_s'] / 1e9:.1f}", None, None, None,
                  f"{b['logprob_gap_after_push']:.4f}"] for b in f["more_buckets"]]
    return rows


PUSH_HEADERS = ["mode", "transport", "GB", "push ms", "GB/s", "export ms", "engines busy ms", "plain NCCL broadcast ms",
                "mean |dlogp| scrambled -> after"]


def run_push(ctx: Context, a) -> None:
    rows = push_rows(ctx, a, push_check(a))
    if rows:
        ctx.table(f"weight push: qwen2.5-0.5b shape in bf16, median of {a.reps} pushes", PUSH_HEADERS, rows)


# ---- rollout -------------------------------------------------------------------------------

def rollout_options(ap):
    shape_option(ap)
    ap.add_argument("--prompts", type=int, help="prompts (default 64; 16 on the tiny shape)")
    ap.add_argument("--n", type=int, help="samples per prompt (default 8; 4 on tiny)")
    ap.add_argument("--tokens", type=int, help="new tokens per sample (default 256; 32 on tiny)")
    ap.add_argument("--repeat", type=int, default=4, help="rounds, each running every case once (default 4)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)


def run_rollout(ctx: Context, a) -> None:
    resolve_shape(a, "the rollout suite")
    argv = ["-m", "benchmarks.rollout_throughput", model(a.shape), "--prompts", str(tiny(a, a.prompts, 16, 64)),
            "--n", str(tiny(a, a.n, 4, 8)), "--tokens", str(tiny(a, a.tokens, 32, 256)), "--repeat", str(a.repeat),
            "--gpu-memory-utilization", str(a.gpu_memory_utilization)]
    rec = ctx.step("rollout", argv)
    f = rec["figures"]
    if not f:
        return no_figures(ctx, rec)
    ctx.table(f"rollout: {a.shape} shape, {f['prompts']} prompts x {f['n']} samples x up to {f['tokens']} tokens, "
              f"median of {f['repeat']} rounds; ours unseeded by phase: "
              + ", ".join(f"{k.removeprefix('time/')} {v:.3f} s" for k, v in f["ours_unseeded_phases_s"].items()),
              ["case", "seconds", "output tokens/s", "vs bare unseeded", "vs bare, same requests", "lowest", "highest"],
              [[c["case"], num(c["seconds"]), f"{c['tokens_per_s']:,.0f}", pct(c["vs_bare_unseeded"]),
                pct(c["vs_bare_same_requests"]), pct(c["lowest"]), pct(c["highest"])] for c in f["cases"]])


# ---- agents --------------------------------------------------------------------------------

def agents_options(ap):
    shape_option(ap)
    ap.add_argument("--trajectories", type=int, default=64)
    ap.add_argument("--workers", type=int, default=64, help="tool worker processes (agent.tool_workers)")


def run_agents(ctx: Context, a) -> None:
    resolve_shape(a, "the agents suite")
    argv = ["-m", "benchmarks.agent_concurrency", model(a.shape, chat=True), "--trajectories", str(a.trajectories),
            "--workers", str(a.workers)]
    rec = ctx.step("agents", argv)
    f = rec["figures"]
    if not f:
        return no_figures(ctx, rec)
    ctx.table(f"agents: {f['trajectories']} trajectories x 3 calls of a tool that sleeps 1 s, {a.shape} shape on {f['device']}",
              ["tool calls", "serial tool time s", "wall s", "engine busy s", "beyond generation s", "engine busy share",
               "trajectories/s"],
              [[f["tool_calls"], num(f["tool_seconds_serial"], 0), num(f["wall_s"], 2), num(f["engine_busy_s"], 2),
                num(f["beyond_generation_s"], 2), pct(f["engine_busy_share"]), num(f["trajectories_per_s"], 1)]])


# ---- workload ------------------------------------------------------------------------------

UNSEEDED = "rollout.seed_per_prompt=false"
# 64 trajectories a step (16 prompts x 4), each three 1-s tool calls then a last turn, 64 new tokens a
# turn; enough tool workers that three batches' calls never queue for one
MULTI_TURN = [UNSEEDED, "agent.env=benchmarks/agent_envs.py:SleepyTool", "agent.tool_workers=192",
              "rl.prompts_per_step=16", "rl.n=4", "rl.max_new_tokens=64", "rollout.max_model_len=512", "task.num_eval=16"]
# name: (GPUs, shape, overrides, steps by default or None for --steps, what)
VARIANTS = {
    "unseeded": (1, "qwen2.5-0.5b", [UNSEEDED], None, "one GPU shared half and half, unseeded requests (as TRL's)"),
    "seeded": (1, "qwen2.5-0.5b", [], None, "one GPU, every prompt's samples seeded (the product's default)"),
    "off-policy": (1, "qwen2.5-0.5b", [UNSEEDED, "rl.off_policy_steps=1"], None,
                   "one-step off-policy: the next step generated while this one trains"),
    "k2": (1, "qwen2.5-0.5b", [UNSEEDED, "rl.off_policy_steps=2"], None,
           "two steps ahead: batches t+1 and t+2 generating while step t trains"),
    "k1-partial": (1, "qwen2.5-0.5b", [UNSEEDED, "rl.off_policy_steps=1", "rl.partial_rollouts=true"], None,
                   "one step ahead, pushes landing in generation in flight (partial rollouts)"),
    "k2-partial": (1, "qwen2.5-0.5b", [UNSEEDED, "rl.off_policy_steps=2", "rl.partial_rollouts=true"], None,
                   "two steps ahead with partial rollouts"),
    "k2-decoupled": (1, "qwen2.5-0.5b", [UNSEEDED, "rl.off_policy_steps=2", "rl.partial_rollouts=true",
                                         "algo.rollout_correction=decoupled"], None,
                     "two steps ahead, partial rollouts, the decoupled PPO correction"),
    "lora": (1, "qwen2.5-0.5b", [UNSEEDED, "rl.lr=1e-5"], None, "LoRA adapters (actor.lora.rank, --lora-rank)"),
    "multi-turn": (1, "qwen2.5-0.5b-chat", MULTI_TURN, 5, "multi-turn, a tool that sleeps 1 s (benchmarks/agent_envs.py), "
                   "64 trajectories a step; samples/s = trajectories/s"),
    "multi-turn-k2": (1, "qwen2.5-0.5b-chat", [*MULTI_TURN, "rl.off_policy_steps=2"], 10,
                      "multi-turn two steps ahead: pushes land between turns"),
    "multi-turn-k2-partial": (1, "qwen2.5-0.5b-chat", [*MULTI_TURN, "rl.off_policy_steps=2", "rl.partial_rollouts=true"],
                              10, "multi-turn two steps ahead with partial rollouts"),
    "dp2": (2, "qwen2.5-0.5b", ["actor.world_size=2"], None, "FSDP2 over two GPUs, one vLLM engine"),
    "tp2": (2, "qwen2.5-0.5b", ["actor.world_size=2", "actor.tp_size=2"], None, "tensor parallel over two GPUs"),
    "dp2-fsdp": (2, "qwen2.5-0.5b", ["actor.world_size=2", "actor.engine=fsdp"], None, "dp2 on the plain FSDP2 engine"),
    "dp2-fsdp-2engines": (2, "qwen2.5-0.5b", ["actor.world_size=2", "rollout.num_engines=2", "actor.engine=fsdp"], None,
                          "dp2 on the FSDP2 engine, a vLLM engine per GPU"),
    "dp2-sleep": (2, "qwen2.5-0.5b", ["actor.world_size=2", "rollout.num_engines=2", "rollout.sleep=true"], None,
                  "dp2, a vLLM engine per GPU, sleep mode"),
    "disaggregated": (2, "qwen2.5-0.5b", ["actor.num_gpus_per_worker=1", "rollout.num_gpus=1",
                                          "rollout.placement=disaggregated", "rollout.gpu_memory_utilization=0.6"], None,
                      "trainer on GPU 0, vLLM on GPU 1, weights over NCCL"),
    "moe-ep2": (2, "qwen3-moe-tiny", ["rl.prompts_per_step=16", "rl.n=4", "rl.max_new_tokens=64",
                                      "rollout.max_model_len=256", "task.num_eval=16", "actor.world_size=2",
                                      "actor.ep_size=2", "actor.micro_batch_size=16"], 3,
                "a tiny Qwen3-MoE trained with expert parallelism (ep=2) feeding vLLM, 16 prompts x 4 x 64 tokens"),
}
TWO_GPU_VARIANTS = ["dp2", "tp2", "dp2-fsdp", "dp2-sleep", "disaggregated", "moe-ep2"]


def workload_options(ap):
    ap.add_argument("--variants", default="unseeded", help="comma-separated, one run each (default %(default)s): "
                    + "; ".join(f"{k}: {v[4]} ({v[0]} GPU{'s' if v[0] > 1 else ''})" for k, v in VARIANTS.items()))
    ap.add_argument("--steps", type=int, default=None,
                    help="RL steps (default 7; moe-ep2: 3); medians over steps 3 on, "
                         "less the last k of rl.off_policy_steps=k")
    ap.add_argument("--lora-rank", type=int, default=32, help="the lora variant's rank (default 32)")


def workload_check(a) -> list[str]:
    variants = a.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise CannotRun(f"--variants: {', '.join(unknown)} is not one of {', '.join(VARIANTS)}")
    need_gpus(max(VARIANTS[v][0] for v in variants), f"the reference workload ({a.variants})")
    return variants


def workload_run(ctx: Context, a, variant: str, name: str) -> dict | None:
    """One run of reference_workload.py; its summary (medians and every step), or None."""
    _, shape, overrides, steps, _ = VARIANTS[variant]
    if variant == "lora":
        overrides = overrides + [f"actor.lora.rank={a.lora_rank}"]
    folder = ctx.scratch / name
    base = shape.removesuffix("-chat")  # "-chat": the tool task's chat tokenizer
    argv = ["-m", "benchmarks.reference_workload", str(folder), "--model", model(base, chat=base != shape), "--shape", base,
            "--steps", str(a.steps or steps or 7), *overrides, *a.overrides]
    rec = ctx.step(name, argv, json_flag=False)
    summary = folder / "summary.json"
    if rec["rc"] or not summary.is_file():
        no_figures(ctx, rec)
        return None
    rec["figures"] = json.loads(summary.read_text())
    shutil.rmtree(folder / "run" / "checkpoints", ignore_errors=True)  # a random model's weights: gigabytes, no use
    return rec["figures"]


WORKLOAD_HEADERS = ["variant", "median of steps", "step s", "samples/s", "generate s", "log-probs s", "train s",
                    "rollout wait s", "push ms", "generated tokens/s", "mean |dlogp|", "policy lag", "peak GiB"]


def workload_row(variant: str, f: dict) -> list:
    m = f["median"]
    peaks = [s["perf/actor_peak_memory_gb"] for s in f["steps"] if "perf/actor_peak_memory_gb" in s]
    steps = f["median_of_steps"]
    return [variant, f"{steps[0]}-{steps[-1]}", num(m["time/step"]), num(m.get("samples_per_s"), 1),
            num(m.get("time/generate")), num(m.get("time/logprobs")), num(m.get("time/train")),
            num(m.get("time/rollout_wait")), ms(m.get("time/push")),
            f"{m['gen_tokens_per_s']:,.0f}", num(m.get("rollout/logprob_abs_diff_mean"), 4),
            num(m.get("rollout/policy_lag"), 2), num(max(peaks), 1) if peaks else None]


def workload_table(ctx: Context, rows: list[list]) -> None:
    if rows:
        ctx.table("reference workload (64 prompts x 8 samples x 256 new tokens a step, unless the variant says "
                  "otherwise; every step's phases in the JSON)", WORKLOAD_HEADERS, rows)


def run_workload(ctx: Context, a) -> None:
    rows = []
    for v in workload_check(a):
        f = workload_run(ctx, a, v, f"workload-{v}")
        if f:
            rows.append(workload_row(v, f))
    workload_table(ctx, rows)


# ---- vs-trl --------------------------------------------------------------------------------

def vs_trl_options(ap):
    ap.add_argument("--steps", type=int, default=7, help="steps of each system; medians over steps 3 on (default 7)")
    ap.add_argument("--systems", default="ours,trl", help="comma-separated, run in this order on the same card "
                    "(default %(default)s)")


def run_vs_trl(ctx: Context, a) -> None:
    systems = a.systems.split(",")
    if set(systems) - {"ours", "trl"}:
        raise CannotRun(f"--systems {a.systems}: each must be ours or trl")
    need_gpus(1, "the vs-trl suite (TRL's colocated vLLM)")
    if "trl" in systems and importlib.util.find_spec("trl") is None:
        raise CannotRun("TRL is not importable here: install trl==1.16.0 beside the stack (benchmarks/vs_trl/README.md), "
                        "or run --systems ours")
    rows, steps = [], {}
    a.overrides = []
    for system in systems:
        if system == "ours":
            f = workload_run(ctx, a, "unseeded", "vs-trl-ours")
            if f:
                m = f["median"]
                steps["ours"] = m["time/step"]
                rows.append(["ours", num(m["time/step"]), num(m["time/generate"]), num(m.get("time/logprobs", 0.0)),
                             num(m["time/train"]), num(m["time/push"]), None])
            continue
        rec = ctx.step("vs-trl-trl", ["benchmarks/vs_trl/run_trl.py", "--model", model("qwen2.5-0.5b"),
                                      "--steps", str(a.steps)])
        f = rec["figures"]
        if not f:
            no_figures(ctx, rec)
            continue
        m = f["median"]
        steps["trl"] = m["step_s"]
        rows.append([f"TRL {f['versions']['trl']} GRPOTrainer", num(m["step_s"]), num(m["generate_s"]),
                     num(m["old_logprobs_s"]), num(m["loss_forward_s"] + m["rest_s"]), num(m["weight_sync_s"]),
                     num(m["prepare_other_s"])])
    if rows:
        ctx.table("reference workload, same card, unseeded requests; medians over steps 3 on, seconds",
                  ["system", "step", "generate", "old log-probs", "train", "weight sync", "other input prep"], rows)
    if len(steps) == 2:
        ctx.note(f"ours / TRL step: {steps['ours'] / steps['trl']:.3f}")


# ---- lora ----------------------------------------------------------------------------------

def lora_options(ap):
    ap.add_argument("--rank", type=int, default=32, help="LoRA rank (default 32)")
    ap.add_argument("--parts", default=None, help="comma-separated: engines (the engines benchmark on Automodel: every "
                    "weight training, LoRA, LoRA recomputing in backward), workload (the reference workload with LoRA) "
                    "(default: both with a GPU, engines without)")
    ap.add_argument("--full", action="store_true", help="the workload also with every weight training (unseeded)")
    ap.add_argument("--workload-steps", type=int, default=5, help="RL steps of each workload run (default 5)")
    engine_batch_options(ap)
    ap.set_defaults(engines="automodel")


def run_lora(ctx: Context, a) -> None:
    parts = (a.parts or ("engines,workload" if gpu_count() else "engines")).split(",")
    if set(parts) - {"engines", "workload"}:
        raise CannotRun(f"--parts {a.parts}: each must be engines or workload")
    if "engines" in parts:
        engines_check(a)
    if "workload" in parts:
        need_gpus(1, "the lora suite's workload part (on a CPU: --parts engines --shape tiny)")
    if "engines" in parts:
        rows = []
        for label, rank, recompute in [("full", 0, False), (f"lora{a.rank}", a.rank, False),
                                       (f"lora{a.rank}-recompute", a.rank, True)]:
            a.lora_rank, a.lora_recompute = rank, recompute
            rec = engines_step(ctx, a, f"engines-{label}")
            if rec["figures"]:
                rows += [engine_row(r) for r in rec["figures"]["rows"]]
            else:
                no_figures(ctx, rec)
        if rows:
            ctx.table(f"LoRA on the engines: {a.shape}{f' ({a.layers} layers)' if a.layers else ''}, "
                      f"{a.batch} x {tiny(a, a.seq, 256, 1024)} tokens, micro-batch {a.micro_batch}; MFU of LoRA counts "
                      "no base weight gradients", ENGINE_HEADERS, rows)
    if "workload" in parts:
        a.steps, a.lora_rank = a.workload_steps, a.rank
        a.overrides = []
        rows = []
        for v in (["unseeded"] if a.full else []) + ["lora"]:
            f = workload_run(ctx, a, v, f"workload-{v}")
            if f:
                rows.append(workload_row(f"{v} (rank {a.rank}, rl.lr=1e-5)" if v == "lora" else "every weight", f))
        workload_table(ctx, rows)


# ---- two-gpu -------------------------------------------------------------------------------

def two_gpu_options(ap):
    ap.add_argument("--parts", default="workload,push,engines",
                    help="comma-separated (default %(default)s): workload (variants " + ", ".join(TWO_GPU_VARIANTS)
                    + "), push (nccl, tp2), engines (Qwen2.5-7B shape, 14 of 28 layers, FSDP2 over two GPUs)")
    ap.add_argument("--steps", type=int, default=None, help="RL steps of each workload run (default 7; moe-ep2: 3)")


def run_two_gpu(ctx: Context, a) -> None:
    parts = a.parts.split(",")
    if set(parts) - {"workload", "push", "engines"}:
        raise CannotRun(f"--parts {a.parts}: each must be workload, push or engines")
    need_gpus(2, "the two-gpu suite")
    if "workload" in parts:
        run_workload(ctx, SUITES["workload"].parse(["--variants", ",".join(TWO_GPU_VARIANTS)]
                                                   + (["--steps", str(a.steps)] if a.steps else [])))
    if "push" in parts:
        run_push(ctx, SUITES["push"].parse(["--modes", "nccl,tp2"]))
    if "engines" in parts:
        run_engines(ctx, SUITES["engines"].parse(["--shape", "qwen2.5-7b", "--layers", "14", "--world-size", "2",
                                                  "--micro-batch", "2"]))


# ---- gpu-tests -----------------------------------------------------------------------------

def gpu_tests_options(ap):
    ap.add_argument("paths", nargs="*", help="test files or node ids (default: the gpu-marked tests of tests/test_gpu.py)")
    ap.add_argument("-k", dest="expr", default=None, help="pytest's -k expression")


def run_gpu_tests(ctx: Context, a) -> None:
    need_gpus(1, "the gpu-tests suite")
    xml = ctx.out / "runs" / "gpu-tests.xml"
    argv = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_logging=system-out", f"--junitxml={xml}",
            *(a.paths or ["-m", "gpu", "tests/test_gpu.py"]), *(["-k", a.expr] if a.expr else [])]
    rec = ctx.step("gpu-tests", argv, json_flag=False)
    if not xml.is_file():
        return no_figures(ctx, rec)
    rows, tests = [], []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        said = [line for line in (case.findtext("system-out") or "").splitlines() if line.strip()]
        tests.append({"test": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0)), "printed": said[-5:]})
        reason = next((c.get("message", "") for c in case if c.tag == "skipped"), "")
        rows.append([tests[-1]["test"], outcome, f"{tests[-1]['seconds']:.1f}", (said[-1] if said else reason)[:140]])
    rec["figures"] = {"tests": tests}
    ctx.table("GPU tests (what each printed last; all of it in the JSON)", ["test", "outcome", "s", "printed"], rows)


# ---- config-errors -------------------------------------------------------------------------

def config_errors_options(ap):
    ap.add_argument("--cli", type=int, default=None,
                    help="also run the first N cases end to end as `python -m rlhf.main` (default: every case)")


def run_config_errors(ctx: Context, a) -> None:
    from benchmarks import config_errors

    argv, t, rc = sys.argv, time.perf_counter(), 0
    sys.argv = ["config_errors.py"] + ([str(a.cli)] if a.cli is not None else [])
    try:
        config_errors.main()
    except (SystemExit, AssertionError) as e:  # a case that did not fail, or failed otherwise
        print(f"[benchmarks] config-errors: {e}", flush=True)
        rc = 1
    finally:
        sys.argv = argv
    page = ROOT / "docs" / "config-errors.md"
    cases = []
    for line in page.read_text().splitlines():
        got = re.match(r"\| `(.*?)` \|.*\| (\d+) ms \| (?:([\d.]+) s)? \|$", line)
        if got:
            cases.append({"overrides": got[1], "in_process_ms": int(got[2]),
                          "cli_s": float(got[3]) if got[3] else None})
    cold = re.search(r"cold call \(imports included\) took ([\d.]+) s", page.read_text())
    ctx.record("config-errors", "benchmarks/config_errors.py main()", rc, time.perf_counter() - t,
               {"cases": cases, "cold_load_s": float(cold[1]) if cold else None})
    if rc or not cases:
        return
    inproc = [c["in_process_ms"] for c in cases]
    cli = [c["cli_s"] for c in cases if c["cli_s"] is not None]
    ctx.table(f"bad configs ({len(cases)} cases; each case's error and times: {page.relative_to(ROOT)})",
              ["cases", "in-process median ms", "in-process max ms", "first (cold) load s", "end to end median s",
               "end to end max s", "end-to-end cases"],
              [[len(cases), statistics.median(inproc), max(inproc), cold[1] if cold else None,
                num(statistics.median(cli), 2) if cli else None, num(max(cli), 2) if cli else None, len(cli)]])


# ---- algos ---------------------------------------------------------------------------------

def algos_options(ap):
    ap.add_argument("sft", metavar="SFT_CHECKPOINT", help="the checkpoints/sft folder of a default run (bash scripts/run.sh)")
    ap.add_argument("--algos", default=None, help="comma-separated (default: every algorithm)")


def run_algos(ctx: Context, a) -> None:
    from benchmarks import algos_table

    if not (Path(a.sft) / "config.json").is_file():
        raise CannotRun(f"{a.sft} is not a model folder (no config.json): give the checkpoints/sft folder of a default run")
    algos = a.algos.split(",") if a.algos else algos_table.ALGOS
    unknown = [x for x in algos if x not in algos_table.ALGOS]
    if unknown:
        raise CannotRun(f"--algos: {', '.join(unknown)} is not one of {', '.join(algos_table.ALGOS)}")
    overrides = a.overrides or algos_table.DEFAULT_OVERRIDES
    t = time.perf_counter()
    rows = algos_table.run(a.sft, ctx.scratch / "algos", overrides, a.timeout, algos)
    ctx.record("algos", f"benchmarks/algos_table.py run() {' '.join(overrides)}", int(any("error" in r for r in rows)),
               time.perf_counter() - t, {"overrides": overrides, "rows": rows})
    ctx.tables.append((f"algorithms from {a.sft}, {' '.join(overrides)}; held-out accuracy by RL step",
                       algos_table.table(rows)))


SUITES = {s.name: s for s in [
    Suite("workload", "the reference workload through `python -m rlhf.main`: step time by phase (GPU)",
          "A random Qwen2.5-0.5B-shaped model, 64 prompts x 8 samples x 256 new tokens a step, lr 1e-6, the length\n"
          "reward (benchmarks/reference_workload.py); one run per --variants entry; run folders under\n"
          ".work/benchmarks/scratch (their checkpoints deleted).", 600, workload_options, run_workload, overrides=True),
    Suite("vs-trl", "the reference workload, ours then TRL 1.16's GRPOTrainer on the same card (GPU, TRL installed)",
          "Ours with unseeded requests (as TRL's), then benchmarks/vs_trl/run_trl.py; TRL must be importable\n"
          "(benchmarks/vs_trl/README.md).", 600, vs_trl_options, run_vs_trl),
    Suite("engines", "the training engines side by side on one batch: tokens/s, MFU, peak memory (GPU; CPU: tiny shape)",
          "An SFT step of the Automodel and FSDP2 engines as the product runs them (a Ray trainer group)\n"
          "(benchmarks/engine_throughput.py). Two-GPU shapes: --world-size 2 [--tp 2].", 600, engines_options,
          run_engines),
    Suite("train-profile", "where one train step's time goes, per engine, in-process (GPU; CPU: tiny shape)",
          "The reference workload's train batch, timed, then one step under the PyTorch profiler\n"
          "(benchmarks/train_profile.py), one run per engine.", 300, profile_options, run_profile),
    Suite("push", "the weight push trainer -> vLLM: time, GB/s, phases, log-prob check (1 GPU; nccl, tp2: 2 GPUs)",
          "One push through Roles.sync_weights, timed, after vLLM's weights are scrambled\n"
          "(benchmarks/weight_push.py), one run per mode.", 400, push_options, run_push, overrides=True),
    Suite("rollout", "our rollout engine against bare vLLM on the same requests: output tokens/s (GPU; CPU: tiny shape)",
          "Unseeded and seeded per prompt, round-robin in one process (benchmarks/rollout_throughput.py).", 600,
          rollout_options, run_rollout),
    Suite("agents", "multi-turn rollouts with a slow tool: wall time against the engine's busy time (GPU; CPU: tiny shape)",
          "64 trajectories x 3 calls of a tool that sleeps 1 s on one rollout engine, the environment calling it\n"
          "whatever the model writes (benchmarks/agent_concurrency.py).", 600, agents_options, run_agents),
    Suite("lora", "LoRA against full training: the engines, and the workload with actor.lora.rank (GPU; CPU: engines on "
          "the tiny shape)", "The engines benchmark with --lora-rank (Automodel), the reference workload with\n"
          "actor.lora.rank and rl.lr=1e-5.", 600, lora_options, run_lora),
    Suite("two-gpu", "the two-GPU runs: the workload at dp=2, tp=2, sleep mode, disaggregated, MoE ep=2; NCCL and TP=2 "
          "pushes; 7B-shape engines (2 GPUs)", "Each part is a run of the workload, push or engines suite.", 600,
          two_gpu_options, run_two_gpu),
    Suite("gpu-tests", "the GPU-marked tests, outcome and printed figures per test (GPU)",
          "pytest -m gpu tests/test_gpu.py (or the tests named, e.g. tests/test_lora.py), with -k.", 3600,
          gpu_tests_options, run_gpu_tests),
    Suite("config-errors", "every bad config of tests/bad_configs.py timed; rewrites docs/config-errors.md (CPU)",
          "benchmarks/config_errors.py: in-process load_config, then end to end as python -m rlhf.main.", 600,
          config_errors_options, run_config_errors),
    Suite("algos", "every algorithm from one SFT checkpoint at the same RL budget: held-out accuracy (CPU or GPU)",
          "benchmarks/algos_table.py; --timeout is per algorithm; overrides default to rl.steps=30 eval.every=10.",
          1800, algos_options, run_algos, overrides=True),
]}
