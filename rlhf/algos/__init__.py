"""Algorithm math as pure functions on tensors. The names each config choice may take live here,
free of torch, so config validation can check them without importing it."""

ESTIMATORS = ("grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae")
# Estimators whose baseline is the other samples of the same prompt: with one sample per prompt
# every advantage is 0 and nothing learns.
GROUP_ESTIMATORS = ("grpo", "rloo", "reinforce_pp_baseline")
AGGREGATIONS = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
POLICY_LOSSES = ("ppo_clip", "gspo")
KL_ESTIMATORS = ("k1", "k2", "k3")
ROLLOUT_CORRECTIONS = ("tis", "mis", "decoupled")
