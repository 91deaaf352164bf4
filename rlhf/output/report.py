"""`python -m rlhf.output.report DIR`: plots and a summary of a run, from its metrics.jsonl, in DIR/report/.

Works on any run folder: finished (summary.json there), still running, stopped or crashed
(whatever rows were written). Also built at the end of every run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from rlhf.output.metrics import read_metrics

# (file, title, y label, [(key, legend)], the quantity is never negative): one plot each, over RL
# steps. The reward has a figure of its own (_reward_figure).
RL_PLOTS = [
    ("kl", "KL to the reference", "KL", [("actor/kl_ref", "kl_ref (loss)"), ("actor/kl_rollout_batch", "on the rollout batch")],
     False),
    ("entropy", "Policy entropy (estimate from the samples)", "nats / token",
     [("actor/entropy_estimate", "-log p of sampled tokens"), ("actor/entropy", "entropy (bonus term)")], True),
    ("response_length", "Response length", "tokens", [("response/length_mean", "mean")], True),
    ("clip_fraction", "PPO clip fraction", "fraction", [("actor/clip_frac", "actor"), ("critic/clip_frac", "critic")], True),
    ("grad_norm", "Gradient norm (before clipping)", "norm", [("actor/grad_norm", "actor"), ("critic/grad_norm", "critic")],
     True),
    ("throughput", "Throughput", "tokens / s", [("throughput/generated_tokens_per_s", "generated"),
                                                ("throughput/trained_tokens_per_s", "trained")], True),
    # multi-turn runs (rollout/trajectory.py's stats)
    ("agent", "Agent trajectories", "per trajectory", [("agent/turns_mean", "turns"),
                                                       ("agent/tool_calls_mean", "tool calls"),
                                                       ("agent/tool_errors_mean", "tool errors")], True),
    # batches generated ahead (rl.off_policy_steps), counted after the step's push
    ("rollout_buffer", "Batches generated ahead, at the end of the step", "batches",
     [("rollout/buffer_ready", "ready"), ("rollout/buffer_in_flight", "in flight")], True),
]
# Why a plot whose every value is 0 is left out (report.md says so instead); the default reason otherwise.
ALL_ZERO = {"clip_fraction": "no token's probability ratio left the clip range; with one on-policy update per batch "
                             "the ratio is 1",
            "rollout_buffer": "with rl.off_policy_steps=0 each step generates its batch when it starts",
            "policy_lag": "on-policy: every token was sampled by the policy being trained"}
LAG_SHARE = "rollout/policy_lag_share/"
PHASES = ["time/rollout", "time/logprobs", "time/train", "time/push", "time/checkpoint"]
# Built-in rewards whose every value lies in [0, 1] (rewards/builtin.py)
UNIT_REWARDS = {"arithmetic", "exact_match", "math_answer", "format_match", "code_tests"}


def _rows(out: Path) -> list[dict]:
    """Rows merged per (stage, step): a step's checkpoint time comes in a row of its own."""
    merged: dict[tuple, dict] = {}
    for row in read_metrics(out) if (out / "metrics.jsonl").exists() else []:
        merged.setdefault((row["stage"], row["step"]), {}).update(row)
    return list(merged.values())


def _stages(rows: list[dict], marker: str) -> list[str]:
    """The stages (any names: sft, rl, rl2, ...) with a row holding `marker`, in run order."""
    return list(dict.fromkeys(r["stage"] for r in rows if marker in r))


def _series(rows: list[dict], stage: str, key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in rows if r["stage"] == stage and isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


def policy_lag_shares(rows: list[dict], stages: list[str]) -> dict[int, float]:
    """The share of sampled tokens at each policy lag, averaged over the RL steps of `stages` that
    logged shares (a lag a step did not log counts 0 there): the policy lag histogram's bars."""
    steps = [r for r in rows if r["stage"] in stages and "reward/mean" in r and any(k.startswith(LAG_SHARE) for k in r)]
    lags = sorted({int(k[len(LAG_SHARE):]) for r in steps for k in r if k.startswith(LAG_SHARE)})
    return {j: sum(float(r.get(f"{LAG_SHARE}{j}") or 0.0) for r in steps) / len(steps) for j in lags}


def reward_range(config: dict) -> tuple[float, float] | None:
    """The range the training reward can take, where the run's config (config.json) tells: the
    built-in rewards with values in [0, 1] (weighted in `reward.fns`), the fallback of failed calls,
    and DAPO's overlong penalty (down to -1), over every stage's overrides. None where it does not."""
    sections = [config] + [{**config, **{k: {**config.get(k, {}), **v} for k, v in over.items() if isinstance(v, dict)}}
                           for over in (config.get("stage_overrides") or {}).values() if isinstance(over, dict)]
    lo, hi = math.inf, -math.inf
    for c in sections:
        reward, algo = c.get("reward") or {}, c.get("algo") or {}
        fns = [(f.get("name"), f.get("weight", 1.0)) for f in reward.get("fns") or []] or [(reward.get("fn"), 1.0)]
        if not all(name in UNIT_REWARDS and isinstance(w, (int, float)) and w >= 0 for name, w in fns):
            return None
        top = float(sum(w for _, w in fns))
        fallback = float(reward.get("fallback", 0.0))
        lo = min(lo, fallback, -1.0 if algo.get("overlong_buffer") else 0.0)
        hi = max(hi, fallback, top)
    return lo, hi


def _config(out: Path) -> dict:
    path = out / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _floor(ax, ys: list[float], nonneg: bool) -> None:
    """A y-range that does not make noise look like signal: from 0 for a quantity that is never
    negative, else at least +-10% of the values' mean around them."""
    lo, hi = min(ys), max(ys)
    if nonneg:
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], hi * 1.05, 1e-12))
        return
    mid, half = (lo + hi) / 2, max((hi - lo) / 2, 0.1 * abs(sum(ys) / len(ys)))
    if half > 0:
        ax.set_ylim(min(ax.get_ylim()[0], mid - 1.05 * half), max(ax.get_ylim()[1], mid + 1.05 * half))


def _plots(rows: list[dict], folder: Path, config: dict) -> tuple[list[tuple[str, str]], list[str]]:
    """The PNGs written, as (file stem, title), and notes on the plots left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    made, notes = [], []

    def save(fig, name: str, title: str) -> None:
        for ax in fig.axes:
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        made.append((name, title))

    rl_stages = _stages(rows, "reward/mean")
    # Held-out accuracy: one panel per stage (each on its own steps), sharing the accuracy axis.
    stages = _stages(rows, "eval/accuracy")
    if stages:
        fig, axes = plt.subplots(1, len(stages), figsize=(3 * max(len(stages), 2), 3.5), sharey=True, squeeze=False)
        for i, (ax, st) in enumerate(zip(axes[0], stages)):
            x, y = _series(rows, st, "eval/accuracy")
            if i and x[0] != 0:  # a stage starts from the last measurement of the one before
                x, y = [0, *x], [_series(rows, stages[i - 1], "eval/accuracy")[1][-1], *y]
            ax.plot(x, y, "o-")
            for xi, yi in zip(x, y):
                ax.annotate(f"{yi:.2f}", (xi, yi), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
            ax.set(title=st.upper(), xlabel=f"{st.upper()} step", ylim=(0, 1.05))
        axes[0][0].set_ylabel("held-out accuracy")
        fig.suptitle("Held-out accuracy", fontsize=11)
        save(fig, "eval_accuracy", "Held-out accuracy")
    sft_stages = _stages(rows, "sft/loss")
    if sft_stages:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        held = [st for st in sft_stages if _series(rows, st, "sft/eval_loss")[0]]
        for st in sft_stages:
            ax.plot(*_series(rows, st, "sft/loss"), label=f"{st}: train" if held else st)
        for st in held:
            ax.plot(*_series(rows, st, "sft/eval_loss"), "o-", label=f"{st}: held out")
        ax.set(title="SFT loss", xlabel="SFT step", ylabel="loss")
        if len(sft_stages) > 1 or held:
            ax.legend(fontsize=8)
        save(fig, "sft_loss", "SFT loss")
    if rl_stages:
        _reward_figure(plt, rows, rl_stages, reward_range(config), save)
    for name, title, ylabel, keys, nonneg in RL_PLOTS:
        # one line per key and RL stage (named after the stage when there are several)
        lines = [(legend if len(rl_stages) == 1 else f"{st}: {legend}", *_series(rows, st, key))
                 for st in rl_stages for key, legend in keys]
        lines = [line for line in lines if line[1]]
        if not lines:
            continue
        ys = [v for line in lines for v in line[2]]
        if not any(ys):
            notes.append(f"{title}: not plotted, 0 at every step ({ALL_ZERO.get(name, 'nothing to show')}).")
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for legend, x, y in lines:
            ax.plot(x, y, marker="." if len(x) < 40 else None, label=legend)
        _floor(ax, ys, nonneg)
        ax.set(title=title, xlabel="RL step", ylabel=ylabel)
        ax.legend(fontsize=8)
        save(fig, name, title)
    _lag_figure(plt, rows, rl_stages, save, notes)
    _phase_figure(plt, rows, rl_stages, save)
    return made, notes


def _reward_figure(plt, rows: list[dict], rl_stages: list[str], bounds, save) -> None:
    """The reward (mean, and mean +- std clipped to the range the reward can take) above the share
    of prompts whose samples got different rewards (groups with signal), on an axis of its own."""
    several = len(rl_stages) > 1
    shares = {st: _series(rows, st, "reward/groups_with_signal") for st in rl_stages}
    shares = {st: xy for st, xy in shares.items() if xy[0]}
    if shares:
        fig, (top, low) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, height_ratios=[3, 2])
    else:
        fig, top = plt.subplots(figsize=(6, 3.5))
    for st in rl_stages:
        x, mean = _series(rows, st, "reward/mean")
        line, = top.plot(x, mean, marker="." if len(x) < 40 else None, label=f"{st}: mean" if several else "mean")
        std = _series(rows, st, "reward/std")[1]
        if len(std) == len(mean):
            lo, hi = bounds or (-math.inf, math.inf)
            top.fill_between(x, [max(m - s, lo) for m, s in zip(mean, std)], [min(m + s, hi) for m, s in zip(mean, std)],
                             alpha=0.2, color=line.get_color(),
                             label=f"{st}: mean ± std" if several else
                             "mean ± std" + (f", within [{lo:g}, {hi:g}]" if bounds else ""))
        if st in shares:
            low.plot(*shares[st], marker="." if len(shares[st][0]) < 40 else None, color=line.get_color(),
                     label=st if several else None)
    if bounds:
        pad = 0.03 * (bounds[1] - bounds[0])
        top.set_ylim(bounds[0] - pad, bounds[1] + pad)
    top.set(title="Training reward", ylabel="reward", xlabel="" if shares else "RL step")
    top.legend(fontsize=8)
    if shares:
        low.set(ylim=(0, 1.02), xlabel="RL step", ylabel="share of prompts")
        low.set_title("Groups with signal (samples of a prompt with different rewards)", fontsize=9)
        if several:
            low.legend(fontsize=8)
    save(fig, "reward", "Training reward")


def _lag_figure(plt, rows: list[dict], rl_stages: list[str], save, notes: list[str]) -> None:
    """The policy lag histogram over the RL stages (share of sampled tokens at each lag), above the
    mean and max lag per step; a note instead where no token was sampled behind the trainer."""
    stages = [st for st in rl_stages if _series(rows, st, "rollout/policy_lag")[0]]
    if not stages:
        return
    title = "Policy lag (versions between the policy that sampled a token and the trainer's)"
    shares = policy_lag_shares(rows, stages)
    if not any(v for st in stages for key in ("rollout/policy_lag", "rollout/policy_lag_max")
               for v in _series(rows, st, key)[1]) and not any(v for j, v in shares.items() if j > 0):
        notes.append(f"Policy lag: not plotted, 0 at every step ({ALL_ZERO['policy_lag']}).")
        return
    fig, (top, low) = plt.subplots(2, 1, figsize=(6, 5), height_ratios=[3, 2])
    if shares:
        top.bar(list(shares), list(shares.values()), width=0.8)
        for j, v in shares.items():
            top.annotate(f"{v:.2f}", (j, v), textcoords="offset points", xytext=(0, 3), fontsize=7, ha="center")
        top.set_ylim(0, 1.08)
    several = len(stages) > 1
    top.set(title="Policy lag over " + ", ".join(stages), xlabel="lag (policy versions)",
            ylabel="share of sampled tokens")
    for st in stages:
        x, y = _series(rows, st, "rollout/policy_lag")
        line, = low.plot(x, y, marker="." if len(x) < 40 else None, label=f"{st}: mean" if several else "mean")
        x, y = _series(rows, st, "rollout/policy_lag_max")
        if x:
            low.plot(x, y, "--", color=line.get_color(), label=f"{st}: max" if several else "max")
    low.set_ylim(bottom=0, top=max(low.get_ylim()[1], 1.05))
    low.set(xlabel="RL step", ylabel="lag")
    low.set_title("Per step", fontsize=9)
    low.legend(fontsize=8)
    save(fig, "policy_lag", title)


def _phase_figure(plt, rows: list[dict], rl_stages: list[str], save) -> None:
    # RL steps of all RL stages, one after another (rl2's step 1 follows rl's last)
    by_step, offset = {}, 0
    for st in rl_stages:
        mine = {r["step"]: r for r in rows if r["stage"] == st and ("reward/mean" in r or "time/checkpoint" in r)}
        by_step.update({offset + s: r for s, r in mine.items()})
        offset += max(mine)
    phases = [p for p in PHASES if any(isinstance(r.get(p), (int, float)) for r in by_step.values())]
    if not phases:
        return
    steps = sorted(s for s, r in by_step.items() if "reward/mean" in r)
    # rl.off_policy_steps >= 1: generation and scoring ran on their own beside the trainer, and the
    # step's rollout phase is only its wait for the batch (time/reward is the background's)
    ahead = any(by_step[s].get("rollout/buffer_ready") or by_step[s].get("rollout/buffer_in_flight") for s in steps)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bottom = [0.0] * len(steps)
    for phase in phases:
        vals = [float(by_step[s].get(phase) or 0.0) for s in steps]
        if phase == "time/rollout" and ahead:  # the batch came from generation beside training
            ax.bar(steps, vals, bottom=bottom, label="wait for the batch")
            bottom = [b + v for b, v in zip(bottom, vals)]
            continue
        if phase == "time/rollout":  # split scoring out of the rollout phase
            reward = [float(by_step[s].get("time/reward") or 0.0) for s in steps]
            ax.bar(steps, [v - r for v, r in zip(vals, reward)], bottom=bottom, label="generate")
            bottom = [b + v - r for b, v, r in zip(bottom, vals, reward)]
            ax.bar(steps, reward, bottom=bottom, label="reward")
            bottom = [b + r for b, r in zip(bottom, reward)]
            continue
        ax.bar(steps, vals, bottom=bottom, label=phase.split("/")[1])
        bottom = [b + v for b, v in zip(bottom, vals)]
        if phase == "time/push":  # the rest of the step: advantages, metrics, the driver's own work
            other = [max(float(by_step[s].get("time/step") or 0.0) - b, 0.0) for s, b in zip(steps, bottom)]
            ax.bar(steps, other, bottom=bottom, label="other")
            bottom = [b + o for b, o in zip(bottom, other)]
    ax.set(title="Time per RL step, by phase", ylabel="seconds",
           xlabel="RL step" if len(rl_stages) == 1 else f"RL step ({', then '.join(rl_stages)})")
    # beside the bars, not over them; top to bottom as the bars stack
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    save(fig, "phase_times", "Time per RL step, by phase")


def _config_diff(out: Path) -> list[str]:
    """The run's config.json against the defaults (of its algorithm's config group, if it has one)."""
    from rlhf.config import CONFIG_DIR, flatten, load_config

    path = out / "config.json"
    if not path.is_file():
        return []
    now = flatten(json.loads(path.read_text()))
    algo = now.get("algo.name")
    group = [f"algo={algo}"] if (CONFIG_DIR / "algo" / f"{algo}.yaml").is_file() else []
    defaults = flatten(dataclasses.asdict(load_config(group)))
    diff = [f"`{g}` (config group)" for g in group if g != "algo=grpo"]
    return diff + [f"`{k}={now.get(k)!r}` (default `{defaults.get(k)!r}`)" for k in sorted(set(now) | set(defaults))
                   if k != "trainer.output_dir" and now.get(k) != defaults.get(k)]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def build(out) -> Path:
    """Write `<out>/report/`: a PNG per plot and report.md. Returns the report.md path."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"{out} is not a run folder")
    folder = out / "report"
    folder.mkdir(exist_ok=True)
    rows = _rows(out)
    plots, notes = _plots(rows, folder, _config(out))
    lines = [f"# Run report: {out.name}", ""]
    summary = out / "summary.json"
    last = max((r.get("time", 0) for r in rows), default=None)
    if summary.is_file():
        lines += ["Status: **finished**.", "", "| summary | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in json.loads(summary.read_text()).items()]
    else:
        when = f"; its last row was written {time.time() - last:.0f} s ago" if last else ""
        lines += [f"Status: **not finished** (no summary.json: still running, stopped or crashed{when})."]
    logged = {}
    for r in rows:
        if "sft/loss" in r or "reward/mean" in r:
            kind = "SFT" if "sft/loss" in r else "RL"
            logged[r["stage"]] = (kind, logged.get(r["stage"], (kind, 0))[1] + 1)
    if set(logged) <= {"sft", "rl"}:
        lines += ["", f"SFT steps logged: {logged.get('sft', ('', 0))[1]}; RL steps logged: {logged.get('rl', ('', 0))[1]}."]
    else:
        lines += ["", "Steps logged: " + "; ".join(f"{st} ({kind}) {n}" for st, (kind, n) in logged.items()) + "."]
    for st in _stages(rows, "reward/mean"):
        rl = [r for r in rows if r["stage"] == st and "reward/mean" in r]
        keys = ["reward/mean", "actor/kl_ref", "actor/entropy_estimate", "response/length_mean", "actor/clip_frac",
                "actor/grad_norm", "throughput/generated_tokens_per_s", "throughput/trained_tokens_per_s", "time/step"]
        name = "RL metric" if st == "rl" else f"{st} metric"
        lines += ["", f"| {name} | first step | last step | mean |", "| --- | --- | --- | --- |"]
        for k in keys:
            vals = [r[k] for r in rl if isinstance(r.get(k), (int, float))]
            if vals:
                lines.append(f"| {k} | {_fmt(vals[0])} | {_fmt(vals[-1])} | {_fmt(sum(vals) / len(vals))} |")
        lag = [r["rollout/policy_lag"] for r in rl if isinstance(r.get("rollout/policy_lag"), (int, float))]
        peak = [r["rollout/policy_lag_max"] for r in rl if isinstance(r.get("rollout/policy_lag_max"), (int, float))]
        if lag and (any(lag) or any(peak)):
            lines += ["", f"Policy lag ({st}): mean {_fmt(sum(lag) / len(lag))} versions per sampled token "
                          f"(mean over steps), max {_fmt(max(peak or lag))}."]
    evals = [r for r in rows if "eval/accuracy" in r]
    if evals:
        lines += ["", "| evaluation | held-out accuracy |", "| --- | --- |"]
        lines += [f"| {r['stage']} step {r['step']} | {_fmt(r['eval/accuracy'])} |" for r in evals]
    diff = _config_diff(out)
    lines += ["", "## Config: differences from the defaults", ""]
    lines += [f"- {d}" for d in diff] if diff else ["(none: the default job)"]
    lines += ["", "## Plots", ""]
    lines += [f"### {title}\n\n![{title}]({name}.png)\n" for name, title in plots]
    lines += [f"- {note}" for note in notes]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return folder / "report.md"


def _median(vals: list[float]) -> float:
    vals = sorted(vals)
    return (vals[(len(vals) - 1) // 2] + vals[len(vals) // 2]) / 2


def summary_table(rows: list[dict]) -> str:
    """The console's closing table: per stage, steps and the median of each timing and rate."""
    lines = [f"{'stage':<6}{'steps':>6}  {'metric':<34}{'median':>12}{'last':>12}"]
    sft_keys = ["sft/loss", "sft/eval_loss", "time/step"]
    rl_keys = ["reward/mean", "time/step", "time/rollout", "time/reward", "time/logprobs", "time/train", "time/push",
               "time/checkpoint", "throughput/generated_tokens_per_s",
               "throughput/trained_tokens_per_s"]
    kinds = {st: sft_keys for st in _stages(rows, "sft/loss")} | {st: rl_keys for st in _stages(rows, "reward/mean")}
    for stage, keys in [(st, kinds[st]) for st in dict.fromkeys(r["stage"] for r in rows) if st in kinds]:
        steps = [r for r in rows if r["stage"] == stage and ("sft/loss" in r or "reward/mean" in r)]
        for i, key in enumerate(keys):
            vals = [r[key] for r in rows if r["stage"] == stage and isinstance(r.get(key), (int, float))]
            if vals:
                lines.append(f"{stage if i == 0 else '':<6}{len(steps) if i == 0 else '':>6}  {key:<34}"
                             f"{_fmt(_median(vals)):>12}{_fmt(vals[-1]):>12}")
    for r in rows:
        if isinstance(r.get("eval/accuracy"), (int, float)):
            lines.append(f"{'eval':<6}{'':>6}  {'accuracy at ' + r['stage'] + ' step ' + str(r['step']):<34}"
                         f"{'':>12}{_fmt(r['eval/accuracy']):>12}")
    return "\n".join(lines)


def build_quietly(out) -> None:
    """The end-of-run report and closing table: a failure is a warning, never the run's failure."""
    try:
        path = build(out)
        print(summary_table(_rows(Path(out))), flush=True)
        print(f"[rlhf] report: {path}", flush=True)
    except Exception as e:
        print(f"[rlhf] warning: the report could not be built ({type(e).__name__}: {e}); "
              f"retry with python -m rlhf.output.report {out}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m rlhf.output.report RUN_DIR   (writes RUN_DIR/report/report.md and PNG plots)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        path = build(argv[0])
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[rlhf] report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
