"""Loading: `configs/` composed by Hydra with the command line's overrides, into the schema.

Every override is checked against the composed defaults first, so a misspelled key fails here,
naming the nearest valid keys. Only types are checked here; what the values mean together is
rlhf/config/checks.py's.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from pathlib import Path
from typing import Any

from rlhf.config.schema import ConfigError, RunConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIG_GROUPS = ("algo", "task")


_SCALARS = {
    dict: ((dict,), "a mapping"),
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, path)
    if dataclasses.is_dataclass(tp):
        return to_dataclass(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp in _SCALARS:
        accepted, what = _SCALARS[tp]
        if not isinstance(value, accepted) or (tp is not bool and isinstance(value, bool)):
            raise ConfigError(f"{path} must be {what}, got {value!r}")
        return tp(value)
    raise TypeError(f"unsupported config type {tp} at {path}")


def to_dataclass(cls: type, data: Any, path: str) -> Any:
    where = path or "the config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in hints:
            full = f"{path}.{key}" if path else key
            near = difflib.get_close_matches(key, names, n=3)
            hint = f"; did you mean {', '.join((path + '.' if path else '') + n for n in near)}?" if near else ""
            raise ConfigError(f"unknown config key {full!r}{hint} (valid keys under {where}: {', '.join(names)})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where} is missing {', '.join(missing)}")
    return cls(**{n: _convert(hints[n], data[n], f"{path}.{n}" if path else n) for n in names if n in data})


@functools.cache
def default_config() -> RunConfig:
    """The config of no overrides: what a key newer than a saved config meant before it existed."""
    return compose_config([])


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        out.append(key)
        out.extend(_flat_keys(v, key + "."))
    return out


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="config", overrides=overrides)


def _set_stage_override(data: dict, item: str, key: str) -> None:
    """`stage_overrides={rl2: {...}}` replaces the mapping; `stage_overrides.rl2.rl.steps=3` sets one
    value in it (values parsed as Hydra parses any override)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_overrides([item])[0].value()
    except Exception as e:
        raise ConfigError(f"could not parse override {item!r}: {e}") from e
    path = key.split(".")[1:]
    if not path:
        if not isinstance(value, dict):
            raise ConfigError(f"stage_overrides must be a mapping of stage name to settings, got {value!r}")
        data["stage_overrides"] = value
        return
    node = data["stage_overrides"]
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def compose_config(overrides: list[str]) -> RunConfig:
    """`configs/` with command-line overrides, typed (not checked: see `rlhf.config.load_config`)."""
    from omegaconf import OmegaConf

    groups = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml")) for g in CONFIG_GROUPS}
    group_overrides, value_overrides, per_stage = [], [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value; give it a value, e.g. {item}=VALUE "
                              f"(`python -m rlhf.main --cfg` prints every key with its value)")
        key, value = item.split("=", 1)
        given = key
        if key == "task.name":  # a built-in task comes with its settings: the group of the same name
            key, item = "task", f"task={value}"
        if key == "stage_overrides" or key.startswith("stage_overrides."):
            per_stage.append((item, key))  # free-form by stage name: checked against the schema per stage
            continue
        if key.startswith(("+", "~")):
            raise ConfigError(
                f"override {item!r}: adding or deleting keys is not supported; every key is in configs/ "
                f"(see `python -m rlhf.main --cfg`)"
            )
        if key in groups:
            if value not in groups[key]:
                near = difflib.get_close_matches(value, groups[key], n=3)
                hint = f" Did you mean {', '.join(near)}?" if near else ""
                raise ConfigError(f"{given}={value!r} is not one of {', '.join(groups[key])}.{hint}")
            group_overrides.append(item)
        else:
            value_overrides.append((item, key))
    base = OmegaConf.to_container(_compose(group_overrides), resolve=False)
    valid = _flat_keys(base)
    for item, key in value_overrides:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(f"unknown config key {key!r} in override {item!r}.{hint}")
    try:
        composed = _compose(group_overrides + [item for item, _ in value_overrides])
        data = OmegaConf.to_container(composed, resolve=True)
    except Exception as e:  # Hydra/OmegaConf parse and interpolation errors
        raise ConfigError(f"could not compose the config: {e}") from e
    for item, key in per_stage:
        _set_stage_override(data, item, key)
    return to_dataclass(RunConfig, data, "")
