"""Where a stage's rows come from: the files in `data.train_files` / `data.eval_files`, or, when
no training files are given, the built-in arithmetic task (offline, the default job)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from rlhf.data import arithmetic, arithmetic_tools
from rlhf.data.files import eval_name, load_rows
from rlhf.data.rows import Row


@dataclass
class Data:
    train: list[Row]
    evals: dict[str, list[Row]]  # eval set name (metric keys: eval/<name>/...) -> rows
    texts: list[str]  # the data's text: what the embedded model's tokenizer is trained on


def _texts(rows: list[Row]) -> list[str]:
    out = []
    for row in rows:
        out.append(row.prompt + (str(row.answer) if row.answer is not None else ""))
        out.extend(t for t in [row.response] if t)
        out.extend(m["content"] for m in (row.messages or []) + (row.context or []))
    return out


_READ: dict[str, Data] = {}


def load_data(data, task, seed: int, tools: bool = False) -> Data:
    """`data` and `task` are the config sections of the same names; `tools`: the run has an
    environment (agent.env), which the built-in tool task's demonstrations call. Read once per
    process and settings: a run reads every stage's rows (checking each) before it writes
    anything, then trains on the same rows."""
    key = json.dumps([dataclasses.asdict(data), task and dataclasses.asdict(task), seed, tools], sort_keys=True)
    if key not in _READ:
        _READ[key] = _load(data, task, seed, tools)
    return _READ[key]


def _load(data, task, seed: int, tools: bool) -> Data:
    if not data.train_files and task.name == "arithmetic_tools":
        train, held_out = arithmetic_tools.make_splits(seed, task.max_operand, task.num_train, task.num_eval,
                                                       task.demo_tool_skip, tools)
        return Data(train=train, evals={"held_out": held_out}, texts=arithmetic_tools.corpus(train + held_out))
    if not data.train_files:
        train, held_out = arithmetic.make_splits(seed, task.max_operand, task.ops, task.num_eval, task.demo_carry_error)
        return Data(train=train, evals={"held_out": held_out}, texts=arithmetic.corpus(train + held_out))
    train = [row for path in data.train_files for row in load_rows(path, data)]
    evals: dict[str, list[Row]] = {}
    for path in data.eval_files:
        evals[eval_name(path, set(evals))] = load_rows(path, data)
    return Data(train=train, evals=evals, texts=_texts(train + [r for rows in evals.values() for r in rows]))
