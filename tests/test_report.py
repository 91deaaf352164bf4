"""The report (`python -m rlhf.output.report DIR`) on rows written by hand: a run that never finished (no
summary.json), and plots that must read right."""

import dataclasses
import json
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.output.metrics import read_metrics
from rlhf.output.report import main, policy_lag_shares, reward_range, summary_table


def test_report_of_an_unfinished_run_names_its_status_config_and_plots(tmp_path):
    cfg = load_config(["rl.steps=5", "algo.kl_coef=0.1"])
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    rows = [{"stage": "sft", "step": 0, "eval/accuracy": 0.0}, {"stage": "sft", "step": 1, "sft/loss": 3.0},
            {"stage": "sft", "step": 2, "sft/loss": 2.0}, {"stage": "sft", "step": 2, "eval/accuracy": 0.5}]
    for step in (1, 2):
        rows.append({"stage": "rl", "step": step, "reward/mean": 0.5 + 0.1 * step, "reward/std": 0.1,
                     "actor/kl_ref": 0.01, "time/rollout": 1.0, "time/reward": 0.25, "time/train": 2.0,
                     "time/push": 0.5, "time/step": 4.0})
    rows.append({"stage": "rl", "step": 2, "time/checkpoint": 0.75})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Status: **not finished**" in report
    assert "SFT steps logged: 2; RL steps logged: 2." in report
    assert "| reward/mean | 0.6 | 0.7 | 0.65 |" in report
    assert "`rl.steps=5` (default `60`)" in report and "`algo.kl_coef=0.1` (default `0.0`)" in report
    made = sorted(p.stem for p in (tmp_path / "report").glob("*.png"))
    assert made == ["eval_accuracy", "kl", "phase_times", "reward", "sft_loss"]


def test_report_of_a_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_report_names_every_stage_of_a_run_with_repeated_stages(tmp_path):
    """stages=[sft,rl,rl]: the stages are sft, rl and rl2, each reported and plotted."""
    rows = [{"stage": "sft", "step": 0, "eval/accuracy": 0.0}, {"stage": "sft", "step": 1, "sft/loss": 3.0},
            {"stage": "sft", "step": 1, "eval/accuracy": 0.25}]
    for stage, base in (("rl", 0.25), ("rl2", 0.75)):
        for step in (1, 2, 3):
            rows.append({"stage": stage, "step": step, "reward/mean": base + 0.05 * step, "reward/std": 0.1,
                         "actor/grad_norm": 1.0, "time/rollout": 1.0, "time/train": 2.0, "time/step": 3.5})
        rows.append({"stage": stage, "step": 3, "eval/accuracy": base + 0.2})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([str(tmp_path)]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Steps logged: sft (SFT) 1; rl (RL) 3; rl2 (RL) 3." in report
    assert "| reward/mean | 0.3 | 0.4 | 0.35 |" in report  # rl
    assert "| rl2 metric | first step | last step | mean |" in report
    assert "| reward/mean | 0.8 | 0.9 | 0.85 |" in report  # rl2
    assert "| rl2 step 3 | 0.95 |" in report
    made = sorted(p.stem for p in (tmp_path / "report").glob("*.png"))
    assert made == ["eval_accuracy", "grad_norm", "phase_times", "reward", "sft_loss"]
    table = summary_table(read_metrics(tmp_path))
    assert [line.split()[:2] for line in table.splitlines() if line.startswith(("sft", "rl"))] == [
        ["sft", "1"], ["rl", "3"], ["rl2", "3"]]


def _default_job_rows(out, rl_steps=60):
    """Rows shaped like the default job's: 1000 SFT steps, then GRPO with a 0/1 reward whose mean
    climbs towards 1, nothing clipped, response lengths within a few hundredths of 3 tokens."""
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(load_config([]))))
    rows = [{"stage": "sft", "step": 0, "eval/accuracy": 0.0}]
    rows += [{"stage": "sft", "step": s, "sft/loss": 5.0 / s} for s in range(1, 1001)]
    rows.append({"stage": "sft", "step": 1000, "eval/accuracy": 0.57})
    for s in range(1, rl_steps + 1):
        mean = 0.6 + 0.35 * s / rl_steps
        rows.append({"stage": "rl", "step": s, "reward/mean": mean, "reward/std": (mean * (1 - mean)) ** 0.5,
                     "reward/groups_with_signal": 0.8 - 0.6 * s / rl_steps, "actor/clip_frac": 0.0,
                     "response/length_mean": 2.94 + 0.09 * (s % 2), "time/rollout": 0.45, "time/reward": 0.05,
                     "time/train": 0.7, "time/push": 0.12, "time/step": 1.35, "rollout/policy_lag": 0.0,
                     "rollout/policy_lag_max": 0.0, "rollout/policy_lag_share/0": 1.0, "rollout/buffer_ready": 0.0,
                     "rollout/buffer_in_flight": 0.0, "time/rollout_take_wait": 0.0})
    rows.append({"stage": "rl", "step": rl_steps, "eval/accuracy": 0.97})
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _build_keeping_figures(out) -> dict:
    """Build the report of `out`; every figure it saved, by file stem."""
    from matplotlib.figure import Figure

    saved, savefig = {}, Figure.savefig

    def keep(fig, fname, *args, **kwargs):
        saved[Path(fname).stem] = fig
        return savefig(fig, fname, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", keep)
        assert main([str(out)]) == 0
    return saved


@pytest.fixture(scope="module")
def default_job(tmp_path_factory):
    """The report of rows shaped like the default job's, and every figure it saved, by file stem."""
    out = tmp_path_factory.mktemp("default_job")
    _default_job_rows(out)
    return out, _build_keeping_figures(out)


def _boxes(fig, artists):
    """Where `artists` of the (closed) figure `fig` land when it is drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return [a.get_window_extent(canvas.get_renderer()) for a in artists]


def test_reward_plot_keeps_shares_off_the_reward_axis_and_its_band_within_the_reward_range(default_job):
    out, figures = default_job
    rows = read_metrics(out)
    rl = [r for r in rows if "reward/mean" in r]
    shares = [r["reward/groups_with_signal"] for r in rl]
    means = [r["reward/mean"] for r in rl]
    axes_of = {}
    for ax in figures["reward"].axes:
        for line in ax.get_lines():
            axes_of[tuple(line.get_ydata())] = ax
    assert axes_of[tuple(means)] is not axes_of[tuple(shares)]  # the share has an axis of its own
    assert axes_of[tuple(shares)].get_ylim() == pytest.approx((0, 1.02))
    # mean + std of a 0/1 reward passes 1 (0.95 + 0.22): the band stops at 1, and never drops below 0
    band = [v[1] for poly in axes_of[tuple(means)].collections for path in poly.get_paths() for v in path.vertices]
    assert max(m + (m * (1 - m)) ** 0.5 for m in means) > 1.1
    assert max(band) == pytest.approx(1.0) and min(band) >= 0.0


def test_reward_range_follows_the_config():
    cfg = dataclasses.asdict(load_config([]))
    assert reward_range(cfg) == (0.0, 1.0)  # the built-in task's exact answer
    weighted = {**cfg, "reward": {**cfg["reward"], "fn": None, "fns": [{"name": "math_answer", "weight": 2.0},
                                                                        {"name": "format_match", "weight": 0.5}]}}
    assert reward_range(weighted) == (0.0, 2.5)
    dapo = dataclasses.asdict(load_config(["algo=dapo"]))
    assert reward_range(dapo) == (-1.0, 1.0)  # the overlong penalty reaches -1
    assert reward_range({**cfg, "stage_overrides": {"rl2": {"reward": {"fn": "length_penalty"}}}}) is None
    assert reward_range({**cfg, "reward": {**cfg["reward"], "fn": "my_rewards.py:score"}}) is None


def test_an_all_zero_clip_fraction_is_a_note_not_a_flat_plot(default_job):
    out, figures = default_job
    assert "clip_fraction" not in figures and not (out / "report" / "clip_fraction.png").exists()
    report = (out / "report" / "report.md").read_text()
    assert "PPO clip fraction: not plotted, 0 at every step" in report


def test_axes_and_legends_stay_readable(default_job):
    _, figures = default_job
    # response lengths between 2.94 and 3.03 tokens: the axis starts at 0, so the noise looks small
    (ax,) = figures["response_length"].axes
    assert ax.get_ylim()[0] == 0
    # the phase legend sits beside the bars, not over them
    (ax,) = figures["phase_times"].axes
    legend, plot = _boxes(figures["phase_times"], [ax.get_legend(), ax])
    assert not legend.overlaps(plot)
    # the SFT panel of the held-out accuracy (steps 0 to 1000 in 3 inches): tick labels at least half
    # a character apart
    fig = figures["eval_accuracy"]
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        labels = [t for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
        boxes = _boxes(fig, labels)
        gaps = [b.x0 - a.x1 for a, b in zip(boxes, boxes[1:])]
        assert len(boxes) >= 3 and min(gaps) >= labels[0].get_fontsize() * fig.dpi / 72 / 2, [t.get_text() for t in labels]


def test_an_on_policy_run_gets_a_note_instead_of_a_policy_lag_histogram(default_job):
    out, figures = default_job
    assert "policy_lag" not in figures and not (out / "report" / "policy_lag.png").exists()
    assert "rollout_buffer" not in figures
    report = (out / "report" / "report.md").read_text()
    assert "- Policy lag: not plotted, 0 at every step (on-policy" in report
    assert "- Batches generated ahead, at the end of the step: not plotted, 0 at every step" in report
    assert "Policy lag (rl):" not in report


# (stage, step): the share of the step's sampled tokens at each lag
LAG_SHARES = {("rl", 1): {0: 1.0}, ("rl", 2): {0: 0.25, 1: 0.75}, ("rl", 3): {1: 0.5, 2: 0.5},
              ("rl", 4): {0: 0.125, 1: 0.25, 2: 0.25, 3: 0.375}, ("rl2", 1): {1: 1.0}, ("rl2", 2): {0: 0.5, 2: 0.5}}


def test_an_async_agent_run_plots_its_policy_lag_histogram_agent_turns_and_buffer(tmp_path):
    rows = []
    for (stage, step), shares in LAG_SHARES.items():
        rows.append({"stage": stage, "step": step, "reward/mean": 0.5, "reward/std": 0.1,
                     "rollout/policy_lag": sum(j * v for j, v in shares.items()),
                     "rollout/policy_lag_max": float(max(shares)),
                     **{f"rollout/policy_lag_share/{j}": v for j, v in shares.items()},
                     "rollout/buffer_ready": float(step % 2), "rollout/buffer_in_flight": 1.0,
                     "time/rollout_take_wait": 0.5, "agent/turns_mean": 2.0 + step, "agent/tool_calls_mean": 1.0 + step,
                     "agent/tool_errors_mean": 0.25, "agent/tool_seconds_mean": 0.1, "agent/cut_frac": 0.0})
    rows.append({"stage": "rl", "step": 4, "time/checkpoint": 0.75})  # a row of its own, merged into step 4
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = _build_keeping_figures(tmp_path)
    assert sorted(p.stem for p in (tmp_path / "report").glob("*.png")) == [
        "agent", "phase_times", "policy_lag", "reward", "rollout_buffer"]
    # the histogram: each lag's token share, averaged over the steps of both RL stages
    expected = {}
    for j in range(4):
        total = 0.0
        for shares in LAG_SHARES.values():
            total += shares.get(j, 0.0)
        expected[j] = total / len(LAG_SHARES)
    assert policy_lag_shares(read_metrics(tmp_path), ["rl", "rl2"]) == pytest.approx(expected)
    hist, per_step = figures["policy_lag"].axes
    bars = {round(p.get_x() + p.get_width() / 2): p.get_height() for p in hist.patches}
    assert bars == pytest.approx(expected)
    lines = {line.get_label(): list(line.get_ydata()) for line in per_step.get_lines()}
    assert lines["rl: mean"] == pytest.approx([0.0, 0.75, 1.5, 1.875]) and lines["rl2: max"] == [1.0, 2.0]
    (agent,) = figures["agent"].axes
    assert {line.get_label(): list(line.get_ydata()) for line in agent.get_lines()}["rl: turns"] == [3, 4, 5, 6]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Policy lag (rl): mean 1.031 versions per sampled token (mean over steps), max 3." in report
    assert "Policy lag (rl2): mean 1 versions per sampled token (mean over steps), max 2." in report
    assert "![Agent trajectories](agent.png)" in report and "](policy_lag.png)" in report
    assert "not plotted" not in report
