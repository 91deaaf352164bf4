#!/usr/bin/env bash
# Multi-turn tool use on your own data: SFT then GRPO on GSM8K-format rows (question, answer ending
# in "#### N") where the model may run Python (the built-in `python` environment: each call runs in
# the code sandbox and returns what it printed), scored by the built-in math_answer reward on its
# last turn. Half of train.jsonl's rows also carry a `messages` conversation that calls the tool
# (SFT learns those; the other rows' `answer` is their SFT target). On the embedded tiny model and
# a CPU (about a minute) this shows the plumbing, not learning: SFT makes the tiny model memorize
# the training rows, so its RL trajectories call the tool on them (parsed, run in the sandbox,
# answered, tokens in and out), while held-out accuracy stays 0. For a real run point model.path
# at an instruct model whose chat template takes tools (e.g. Qwen2.5-Instruct) and drop the
# model.arch / length / step overrides. Extra arguments are passed on (key=value).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/env.sh
exec "${PYTHON:-.venv/bin/python}" -m rlhf.main \
  data.train_files=[examples/gsm8k_tools/train.jsonl] data.eval_files=[examples/gsm8k_tools/test.jsonl] \
  data.prompt_key=question data.answer_key=answer data.response_key=answer \
  agent.env=python agent.max_turns=3 agent.tool_workers=2 reward.fn=math_answer \
  model.arch.max_position_embeddings=512 rollout.max_model_len=512 rl.max_new_tokens=64 eval.max_new_tokens=64 \
  sft.steps=150 sft.batch_size=8 rl.steps=3 rl.prompts_per_step=8 rl.n=4 \
  "$@"
