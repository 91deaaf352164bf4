"""Reward functions as plugins: the contract (base.py), names to functions (registry.py), the
manager that scores in worker processes with timeouts (manager.py), built-ins and the code sandbox."""
