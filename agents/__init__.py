"""Multi-turn agents: the environment contract (base.py), environments by name (registry.py),
tool calls parsed by vLLM's parsers (tool_calls.py), tools run in worker processes
(tool_runner.py), token-in/token-out rendering (chat.py) and the built-in environments
(builtin/). The trajectory loop that drives them is the rollout layer's (rollout/trajectory.py).
Imports nothing from the driver (rlhf/) or the rollout layer."""
