"""Resolve a reward function from its name in the config.

`name` may be a built-in (`arithmetic`), a dotted path `package.module:function`, a file path
`path/to/file.py:function`, or a name registered by an installed package under the
`rlhf.rewards` entry-point group. Every error names the setting and the form that would work.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import re
from importlib.metadata import entry_points
from pathlib import Path

from rewards.base import RewardFn
from rewards.builtin import BUILTINS

ENTRY_POINT_GROUP = "rlhf.rewards"
# Built-ins that score a response against the row's ground truth (data.answer_key): with none
# they would give every sample the same reward.
_USES_ANSWER = ("arithmetic", "exact_match", "math_answer", "code_tests")


class RewardResolutionError(ValueError):
    pass


def _plugins() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def needs_answer(name: str) -> bool:
    return name in _USES_ANSWER


def _defined_in(name: str, folder: Path) -> list[Path]:
    """The .py files in `folder` and its subfolders (one level, hidden ones skipped) that define a
    function `name`: where a user's own function given without its file probably lives."""
    pattern = re.compile(rf"^def {re.escape(name)}\(", re.MULTILINE)
    found = []
    for path in sorted(folder.glob("*.py")) + sorted(folder.glob("[!.]*/*.py")):
        try:
            if pattern.search(path.read_text(errors="replace")):
                found.append(path.relative_to(folder))
        except OSError:
            continue
    return found


def _functions(module) -> list[str]:
    import inspect

    return sorted(k for k, v in vars(module).items() if inspect.isfunction(v) and not k.startswith("_"))


def resolve(name: str, key: str = "reward.fn") -> RewardFn:
    """The function `name` names; `key` is the setting it came from, for the errors."""
    if name in BUILTINS:
        return BUILTINS[name]
    plugins = _plugins()
    if name in plugins:
        return plugins[name].load()
    if ":" not in name:
        if name.endswith(".py"):
            raise RewardResolutionError(f"{key}={name!r} names a file but not the function in it; give both: "
                                        f"{key}={name}:<function>")
        known = sorted(BUILTINS) + sorted(plugins)
        near = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        files = _defined_in(name, Path.cwd())
        own = (f" {files[0]} defines {name}: give it with its file, {key}={files[0]}:{name}" if files else
               f" A function of your own is given with its file or module: {key}=path/to/file.py:{name} or "
               f"{key}=package.module:{name}")
        raise RewardResolutionError(f"{key}={name!r} is not a built-in or registered reward ({', '.join(known)}).{hint}{own}")
    module_name, _, attr = name.rpartition(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise RewardResolutionError(f"{key}={name!r}: no file {path} (relative paths start at {Path.cwd()}); give "
                                        f"the path of the .py file that defines {attr}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise RewardResolutionError(f"{key}={name!r}: loading {path} raised {type(e).__name__}: {e}; fix that file "
                                        f"(it is imported once in each reward worker)") from e
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name and not module_name.startswith(f"{e.name}."):  # it is there; what it imports is not
                raise RewardResolutionError(f"{key}={name!r}: importing {module_name!r} failed, it needs {e.name!r} "
                                            f"({e}); install that package") from e
            raise RewardResolutionError(
                f"{key}={name!r}: cannot import {module_name!r} ({e}); install the package that provides it, or give "
                f"the function's file: {key}=path/to/file.py:{attr}") from e
        except Exception as e:
            raise RewardResolutionError(f"{key}={name!r}: importing {module_name!r} raised {type(e).__name__}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        functions = _functions(module)
        near = difflib.get_close_matches(attr, functions, n=1)
        fix = (f"did you mean {key}={module_name}:{near[0]}?" if near else
               f"its functions: {', '.join(functions) or 'none'}")
        raise RewardResolutionError(f"{key}={name!r}: {module_name!r} has no callable {attr!r}; {fix}")
    return fn


def check_call(fn: RewardFn, name: str, kwargs: dict, extra_keys: list[str], key: str = "reward.fn") -> None:
    """That `fn` takes what the reward workers pass: (prompt, response, ground_truth, **extra,
    **kwargs), or for a batched function (prompts, responses, ground_truths, extras, **kwargs);
    `extra` holds the data.extra_keys columns. A missing keyword argument (a built-in's `pattern`,
    `max_chars`) would otherwise fail every call, after start-up."""
    import inspect  # here: the reward workers import this module and should start fast

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read (a builtin written in C): left to the call
        return
    batched = getattr(fn, "batched", False)
    args = ([], [], [], []) if batched else ("", "", None)
    try:
        signature.bind(*args, **({} if batched else dict.fromkeys(extra_keys)), **kwargs)
    except TypeError as e:
        form = ("fn(prompts, responses, ground_truths, extras, **kwargs)" if batched
                else "fn(prompt, response, ground_truth, **extra, **kwargs)")
        missing = re.search(r"missing a required (?:keyword-only )?argument: '(\w+)'", str(e))
        if missing and missing.group(1) not in ("prompt", "response", "ground_truth"):
            fix = (f"give it in kwargs, which reward.fns takes: reward.fn=null 'reward.fns=[{{name: {name}, weight: 1.0, "
                   f"kwargs: {{{missing.group(1)}: ...}}}}]'" if key == "reward.fn" else
                   f"give it in {key.removesuffix('.name')}.kwargs")
        else:
            fix = "a reward function takes (prompt, response, ground_truth, **extra) (rewards/base.py)"
        raise RewardResolutionError(f"{key}={name!r} cannot be called as the reward workers call it, {form} (its "
                                    f"signature: {signature}): {e}; {fix}") from e
