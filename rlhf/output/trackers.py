"""Experiment trackers, fed every row `MetricsLog` writes: `console` (a compact line per step and
each evaluation as it is measured), `tensorboard` (event files), `wandb` (offline mode) and
`mlflow` (a local file store). `metrics.jsonl` is written regardless and stays the source of
truth; a tracker that fails is reported once and dropped, the run goes on.

Each value is logged under `<stage>/<key>` (e.g. `rl/reward/mean`, `sft/sft/loss`) at the row's
step, so the SFT and RL stages, whose steps both start at 1, never mix.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from pathlib import Path

from tqdm import tqdm

from rlhf.config import flatten
from rlhf.output.metrics import fmt

# tracker -> (module it needs, the pip extra that installs it)
NEEDS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
KNOWN = ("console", *NEEDS)


def check(loggers: list[str]) -> None:
    """Unknown trackers and trackers whose package is missing fail here, before Ray starts."""
    from rlhf.config import ConfigError

    for name in loggers:
        if name not in KNOWN:
            raise ConfigError(f"trainer.loggers: unknown tracker {name!r}; choose from {', '.join(KNOWN)}")
        if name in NEEDS and importlib.util.find_spec(NEEDS[name]) is None:
            raise ConfigError(
                f"trainer.loggers includes {name!r}, but the {NEEDS[name]} package is not installed; "
                f"install it with `pip install 'rlhf[{name}]'` or drop {name} from trainer.loggers"
            )


def _numbers(stage: str, metrics: dict) -> dict[str, float]:
    return {f"{stage}/{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Console:
    """One compact line per RL step (every `log_every`), and every evaluation (accuracy, SFT eval
    loss) when measured."""

    RL_KEYS = ("reward/mean", "reward/groups_with_signal", "actor/kl_ref", "actor/clip_frac", "actor/grad_norm",
               "critic/value_loss", "critic/explained_var", "response/length_mean", "rollout/logprob_abs_diff_max",
               "throughput/generated_tokens_per_s", "time/rollout", "time/train", "time/push", "time/step")

    def __init__(self, log_every: int, label: str):
        self.log_every, self.label = log_every, label

    def log(self, stage: str, step: int, metrics: dict) -> None:
        if "eval/accuracy" in metrics:
            tqdm.write(f"[eval {stage} step {step}] accuracy={metrics['eval/accuracy']:.3f} "
                       f"reward={metrics.get('eval/reward', float('nan')):.3f}")
        if "sft/eval_loss" in metrics:
            tqdm.write(f"[eval {stage} step {step}] sft eval_loss={metrics['sft/eval_loss']:.4f} "
                       f"(train loss {metrics['sft/loss']:.4f})")
        if "reward/mean" in metrics and step % self.log_every == 0:  # an RL step of any RL stage (rl, rl2, ...)
            tqdm.write(f"[{self.label}{'' if stage == 'rl' else ' ' + stage} {step}] " + fmt(metrics, list(self.RL_KEYS)))

    def close(self) -> None:
        pass


class TensorBoard:
    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, stage: str, step: int, metrics: dict) -> None:
        for tag, value in _numbers(stage, metrics).items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    """W&B in offline mode: the run lands in `<output_dir>/wandb/` (`wandb sync` uploads it later)."""

    def __init__(self, out: Path, config: dict):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project="rlhf", name=out.name, dir=str(out), mode="offline", config=config,
                              settings=wandb.Settings(console="off", silent=True))
        self.stages: set[str] = set()

    def log(self, stage: str, step: int, metrics: dict) -> None:
        if stage not in self.stages:  # each stage has its own step axis
            self.stages.add(stage)
            self.run.define_metric(f"{stage}/step")
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
        self.run.log({f"{stage}/step": step, **_numbers(stage, metrics)})

    def close(self) -> None:
        self.run.finish()


class MLflow:
    """MLflow with a local file store in `<output_dir>/mlruns` (`mlflow ui --backend-store-uri ...`)."""

    def __init__(self, out: Path, config: dict):
        # MLflow 3 keeps the file store but asks for this opt-in (it steers new users to a database)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
        exp = self.client.get_experiment_by_name("rlhf")
        exp_id = exp.experiment_id if exp else self.client.create_experiment("rlhf")
        self.run_id = self.client.create_run(exp_id, run_name=out.name).info.run_id
        for k, v in flatten(config).items():
            self.client.log_param(self.run_id, k, str(v)[:500])

    def log(self, stage: str, step: int, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(k, v, now, step) for k, v in _numbers(stage, metrics).items()]
        if values:
            self.client.log_batch(self.run_id, metrics=values)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_trackers(loggers: list[str], out: Path, config: dict, log_every: int, label: str) -> list:
    made = []
    for name in loggers:
        if name == "console":
            made.append(Console(log_every, label))
        elif name == "tensorboard":
            made.append(TensorBoard(out))
        elif name == "wandb":
            made.append(WandB(out, config))
        elif name == "mlflow":
            made.append(MLflow(out, config))
    return made
