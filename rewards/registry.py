"""Resolve a reward function from its name in the config.

`name` may be a built-in (`arithmetic`), a dotted path `package.module:function`, a file path
`path/to/file.py:function`, or a name registered by an installed package under the
`rlhf.rewards` entry-point group.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

from rewards.base import RewardFn
from rewards.builtin import BUILTINS

ENTRY_POINT_GROUP = "rlhf.rewards"


class RewardResolutionError(ValueError):
    pass


def _plugins() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def resolve(name: str) -> RewardFn:
    if name in BUILTINS:
        return BUILTINS[name]
    plugins = _plugins()
    if name in plugins:
        return plugins[name].load()
    if ":" not in name:
        known = sorted(BUILTINS) + sorted(plugins)
        near = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise RewardResolutionError(
            f"reward.fn={name!r} is not a built-in or registered reward ({', '.join(known)}), "
            f"nor a 'module:function' path.{hint}"
        )
    module_name, _, attr = name.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise RewardResolutionError(f"reward.fn={name!r}: no file {path}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardResolutionError(f"reward.fn={name!r}: cannot import {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardResolutionError(f"reward.fn={name!r}: {module_name!r} has no callable {attr!r}")
    return fn
