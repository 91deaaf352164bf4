"""`python -m rlhf.main [key=value ...]`: run a job from the Hydra configs in `configs/`.

`--cfg` prints the composed config and exits; `--help` says how to use it.
"""

from __future__ import annotations

import json
import sys

USAGE = """usage: python -m rlhf.main [--cfg] [key=value ...]

Runs the stages (default: SFT warm-start, then RL) as configured in configs/ (defaults:
configs/config.yaml).
  algo=grpo                 algorithm (configs/algo/*.yaml)
  actor.engine=automodel    training engine
  model.path=DIR            any local Hugging Face model folder (default: the embedded tiny model)
  sft.steps=N rl.steps=N    stage lengths
  stages=[sft,rl,rl]        any sequence of stages (per-stage settings: stage_overrides)
  data.train_files=[F]      your own data (.jsonl, .parquet, save_to_disk folders; see README)
  trainer.output_dir=DIR    where metrics.jsonl, summary.json and checkpoints go
  --cfg                     print the composed config and exit
"""


def main(argv: list[str] | None = None) -> int:
    from rlhf.config import ConfigError, load_config

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    show = "--cfg" in argv
    argv = [a for a in argv if a != "--cfg"]
    try:
        cfg = load_config(argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if show:
        import dataclasses

        print(json.dumps(dataclasses.asdict(cfg), indent=2))
        return 0
    from rlhf.pipeline import JobError, run

    try:
        run(cfg)
    except ConfigError as e:  # e.g. a trainer.resume state that does not fit this config
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except JobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
