"""Built-in environments (`agent.env=<name>`, see agents/registry.py)."""
