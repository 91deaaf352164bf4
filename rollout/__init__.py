"""Rollout engines, chosen by `rollout.engine`: name -> "module:class"."""

ROLLOUT_ENGINES = {"vllm": "rollout.vllm_engine:VLLMRollout"}
