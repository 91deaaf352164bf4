"""Environments by name (`agent.env`): a built-in, `module:Class`, `path/to/file.py:Class`, or a
name an installed package registers under the `rlhf.envs` entry-point group."""

from __future__ import annotations

import importlib

from core.plugins import PluginError, load

ENTRY_POINT_GROUP = "rlhf.envs"
# Built-ins load on first use: their modules may import what other runs never need.
BUILTINS = {
    "calculator": "agents.builtin.calculator:CalculatorEnv",
    "python": "agents.builtin.python:PythonEnv",
}


class _Lazy(dict):
    def __getitem__(self, name):
        module, _, attr = super().__getitem__(name).partition(":")
        return getattr(importlib.import_module(module), attr)


def resolve_env(name: str) -> type:
    """The environment class `name` names; a PluginError (a ValueError) says what is wrong."""
    cls = load(name, key="agent.env", builtins=_Lazy(BUILTINS), group=ENTRY_POINT_GROUP, want="class")
    if not isinstance(cls, type) or not callable(getattr(cls, "step", None)):
        raise PluginError(f"agent.env={name!r} is not an environment class (a class with reset and step; see agents/base.py)")
    return cls


__all__ = ["ENTRY_POINT_GROUP", "PluginError", "resolve_env"]
