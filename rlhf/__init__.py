"""The driver: `python -m rlhf.main`. Its sub-packages: config (schema, loading, checks),
orchestration (the run and its processes), output (metrics, report, states), algos (the algorithm
math), data (rows, files, the built-in tasks). It holds no model; the roles it drives do."""
