"""How far the rollout-vs-trainer log-prob gap is from float32's own accuracy: for one RL step of
a run, every sampled token's log-prob from vLLM (the rollout), from the trainer (before the
step's update), and from a float64 forward of the same weights, the exact reference.

    python -m rlhf.main ... trainer.rollout_dump_every=1 trainer.save_every=1 trainer.keep_last=0 trainer.output_dir=RUN
    python -m benchmarks.logprob_precision RUN --step 14

The step's batch comes from RUN/rollouts/rl-stepN.jsonl, the weights that sampled it and that the
trainer scored it with from the state saved after step N-1 (RUN/checkpoints/state-rl-step{N-1}),
the model's config from RUN/checkpoints/final. Prints the worst tokens and the maxima.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--step", type=int, required=True, help="the RL step whose batch is compared (at least 2)")
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args()
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoModelForCausalLM

    rows = [json.loads(line) for line in (a.run / "rollouts" / f"rl-step{a.step}.jsonl").open()]
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(a.run / "checkpoints" / f"state-rl-step{a.step - 1}" / "actor", f"{tmp}/actor.pt")
        weights = torch.load(f"{tmp}/actor.pt", weights_only=True)["model"]
    models = {}
    for dtype in (torch.float32, torch.float64):
        m = AutoModelForCausalLM.from_pretrained(a.run / "checkpoints" / "final", dtype=dtype).eval()
        m.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=True)
        models[dtype] = m
    worst = []
    for i, r in enumerate(rows):
        ids = torch.tensor([r["input_ids"]])
        got = {}
        for dtype, m in models.items():
            with torch.no_grad():
                lp = m(ids).logits[0].double().log_softmax(-1)
            got[dtype] = [0.0] + [lp[t - 1, ids[0, t]].item() for t in range(1, ids.shape[1])]
        for t, sampled in enumerate(r["response_mask"]):
            if sampled:
                exact = got[torch.float64][t]
                worst.append((abs(r["old_logprobs"][t] - r["rollout_logprobs"][t]), abs(r["old_logprobs"][t] - exact),
                              abs(r["rollout_logprobs"][t] - exact), abs(got[torch.float32][t] - exact), i, t))
    worst.sort(reverse=True)
    print(f"RL step {a.step}: {len(worst)} sampled tokens in {len(rows)} rows")
    print("| row | position | trainer - vLLM | trainer - float64 | vLLM - float64 | plain HF float32 - float64 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for gap, tr, vl, hf, i, t in worst[:a.top]:
        print(f"| {i} | {t} | {gap:.2e} | {tr:.2e} | {vl:.2e} | {hf:.2e} |")
    print(f"| max | | {max(w[0] for w in worst):.2e} | {max(w[1] for w in worst):.2e} | {max(w[2] for w in worst):.2e} "
          f"| {max(w[3] for w in worst):.2e} |")


if __name__ == "__main__":
    main()
