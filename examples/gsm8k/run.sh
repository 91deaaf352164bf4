#!/usr/bin/env bash
# The template for your own data: SFT then GRPO on a GSM8K-format file (question, answer ending
# in "#### N"), scored by the built-in math_answer reward. On the embedded tiny model and a CPU
# this shows the plumbing, not learning; for a real run point model.path at a real model and
# drop the model.arch / length / step overrides. Extra arguments are passed on (key=value).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/env.sh
exec "${PYTHON:-.venv/bin/python}" -m rlhf.main \
  data.train_files=[examples/gsm8k/train.jsonl] data.eval_files=[examples/gsm8k/test.jsonl] \
  data.prompt_key=question data.answer_key=answer data.response_key=answer \
  reward.fn=math_answer \
  model.arch.max_position_embeddings=512 rollout.max_model_len=512 rl.max_new_tokens=96 eval.max_new_tokens=96 \
  sft.steps=50 sft.batch_size=8 rl.steps=5 rl.prompts_per_step=8 rl.n=4 eval.pass_k=4 \
  "$@"
