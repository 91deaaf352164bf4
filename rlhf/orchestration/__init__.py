"""The run: the pipeline of stages, the single controller of each step, the preflight, and the role
processes (trainer groups, rollout engines) with their placement, signals and environment."""
