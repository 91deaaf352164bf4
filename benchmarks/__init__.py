"""The project's benchmarks: `python -m benchmarks --list` names the suites."""
