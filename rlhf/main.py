"""`python -m rlhf.main [key=value ...]`: run a job from the Hydra configs in `configs/`.

`--cfg` (or Hydra's `--cfg job`) prints the composed config and exits; `--help` says how to use it.
"""

from __future__ import annotations

import sys
import time

STARTED = time.time()

USAGE = """usage: python -m rlhf.main [--cfg] [key=value ...]

Runs the stages (default: SFT warm-start, then RL) as configured in configs/ (defaults:
configs/config.yaml).
  algo=grpo                 algorithm (configs/algo/*.yaml)
  actor.engine=automodel    training engine
  model.path=DIR            any local Hugging Face model folder (default: the embedded tiny model)
  sft.steps=N rl.steps=N    stage lengths
  stages=[sft,rl,rl]        any sequence of stages (per-stage settings: stage_overrides)
  data.train_files=[F]      your own data (.jsonl, .json, .parquet, .csv, save_to_disk folders; see README)
  trainer.output_dir=DIR    where metrics.jsonl, summary.json and checkpoints go
  --cfg [job]               print the composed config and exit
"""


def main(argv: list[str] | None = None) -> int:
    from rlhf.config import ConfigError
    from rlhf.orchestration.preflight import load_run

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    show = "--cfg" in argv
    if show:  # Hydra's form `--cfg job` (the job's config, the only one here) is accepted too
        i = argv.index("--cfg")
        if i + 1 < len(argv) and argv[i + 1] in ("job", "all"):
            del argv[i + 1]
    argv = [a for a in argv if a != "--cfg"]
    try:
        cfg, _ = load_run(argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if show:
        import dataclasses

        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(dataclasses.asdict(cfg)), end="")  # YAML, as Hydra prints it
        return 0
    import os

    from core import quiet
    from rlhf.orchestration import environment
    from rlhf.output.metrics import StartUp

    # Before torch, Ray, transformers or vLLM are imported (here or in the role processes).
    quiet.install()
    cpu_only = cfg.rollout.num_gpus == 0 and not any(g.num_gpus_per_worker for g in (cfg.actor, cfg.ref, cfg.critic))
    for var, value in {**quiet.ENV, **(quiet.CPU_ENV if cpu_only else {})}.items():
        os.environ.setdefault(var, value)
    notes = environment.use_work_folder()
    startup = StartUp(STARTED)
    startup.done("config", own=True)
    for note in notes:
        print(f"[rlhf] {note}", flush=True)
    from rlhf.orchestration.pipeline import JobError, run
    from rlhf.orchestration.stop_signal import Stopped

    startup.done("imports", "torch, Ray, transformers", own=True)
    try:
        run(cfg, startup)
    except Stopped as e:
        print(f"[rlhf] {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print(f"[rlhf] interrupted ({e or 'KeyboardInterrupt'}); Ray is shut down, no state saved for the current step",
              file=sys.stderr)
        return 130
    except ConfigError as e:  # e.g. a trainer.resume state that does not fit this config
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
