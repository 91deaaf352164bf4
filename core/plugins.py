"""Loading user plugins (reward functions, environments) named in the config.

A name is a built-in, a name an installed package registers under an entry-point group, a dotted
path `package.module:attr`, or a file path `path/to/file.py:attr`. Each kind of plugin keeps its
own built-ins and group; how a name becomes an object is the same for all of them.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path


class PluginError(ValueError):
    """A plugin name that does not resolve, said with what was expected and the fix."""


def registered(group: str) -> dict:
    """The entry points installed packages register under `group`, by name."""
    return {ep.name: ep for ep in entry_points(group=group)}


def _load_file(path: Path):
    """A module loaded from a file, registered in `sys.modules` under a name derived from its
    path, so objects defined in it pickle by reference (worker processes load it the same way)."""
    name = f"_plugin_{path.resolve().with_suffix('').as_posix().strip('/').replace('/', '_').replace('.', '_')}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load(name: str, *, key: str, builtins: dict, group: str, want: str):
    """The object `name` names (see the module docstring). `key` is the config key it came from
    and `want` what it must be ("function", "class"), both for the messages."""
    if name in builtins:
        return builtins[name]
    plugins = registered(group)
    if name in plugins:
        return plugins[name].load()
    if ":" not in name:
        known = sorted(builtins) + sorted(plugins)
        near = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise PluginError(
            f"{key}={name!r} is not a built-in or registered name ({', '.join(known) or 'none'}), nor a path to a "
            f"{want}.{hint} Give your own as {key}=path/to/file.py:name or {key}=package.module:name, or register it "
            f"under the {group!r} entry-point group of an installed package"
        )
    module_name, _, attr = name.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise PluginError(f"{key}={name!r}: no file {path} (paths are relative to the current directory)")
            module = _load_file(path)
        else:
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"{key}={name!r}: cannot import {module_name!r} ({e})") from e
    obj = getattr(module, attr, None)
    if obj is None:
        raise PluginError(f"{key}={name!r}: {module_name!r} has no {want} named {attr!r}")
    return obj
