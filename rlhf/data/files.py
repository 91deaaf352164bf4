"""Data files as a source of rows, read with Hugging Face `datasets`: JSON lines (`.jsonl`,
`.json`), Parquet (`.parquet`), CSV (`.csv`) and folders written by `Dataset.save_to_disk`. A path
may be a glob pattern (`gsm8k/main/train-*.parquet`): a dataset downloaded from the Hub keeps each
split as shards named so, and the pattern reads them all, in name order.

Columns are mapped to the row protocol by the `data.*_key` settings. Every row is checked as it
is read; a bad one stops the run with the file, the row (1-based) and the column named.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from rlhf.data.rows import DataError, Row, check_context, check_messages

_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_SAVED = ("state.json", "dataset_dict.json")  # what save_to_disk writes into a Dataset / DatasetDict folder
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")  # the Hub's shard suffix: train-00000-of-00004.parquet


def expand(path: str) -> list[str]:
    """The files `path` names: itself, or the sorted matches of a glob pattern."""
    if not glob.has_magic(path):
        return [path]
    matches = sorted(m for m in glob.glob(path, recursive=True) if Path(m).is_file())
    if not matches:
        raise DataError(f"{path} matches no file (relative paths start at {Path.cwd()})")
    return matches


def check_path(path: str) -> str | None:
    """What is wrong with a data path, from the file system alone (no file is read), or None."""
    try:
        files = expand(path)
    except DataError as e:
        return str(e)
    for file in files:
        p = Path(file)
        if not p.exists():
            return f"{file} does not exist (relative paths start at {Path.cwd()})"
        if p.is_dir() and not any((p / name).is_file() for name in _SAVED):
            return _not_a_saved_folder(p)
        if p.is_file() and p.suffix not in _FORMATS:
            return f"{file}: unknown format {p.suffix!r}; use .jsonl/.json, .parquet, .csv or a folder written by datasets' save_to_disk"
    return None


def _not_a_saved_folder(folder: Path) -> str:
    found = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix in _FORMATS)
    if not found:
        return (f"{folder} is a folder but not one written by datasets' save_to_disk, and holds no "
                f".jsonl/.json/.parquet/.csv files")
    first = found[0]
    shard = _SHARD.sub("", first.stem)
    pattern = first.parent / (f"{shard}-*{first.suffix}" if shard != first.stem else first.name)
    listed = ", ".join(str(f.relative_to(folder)) for f in found[:6]) + (", ..." if len(found) > 6 else "")
    return (f"{folder} is a folder but not one written by datasets' save_to_disk; it holds data files ({listed}): "
            f"name the split's files, e.g. {pattern}")


def _first_bad_json_line(path: Path) -> str | None:
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    return f"row {n} is not valid JSON ({e.msg}): {line.strip()[:80]!r}"
    return None


def read_table(path: str):
    """The file or saved folder as a `datasets.Dataset` (one split)."""
    import datasets

    datasets.disable_progress_bars()
    p = Path(path)
    problem = check_path(path)
    if problem:
        raise DataError(f"data file {problem} (check data.train_files / data.eval_files)")
    try:
        if p.is_dir():
            table = datasets.load_from_disk(str(p))
            if isinstance(table, datasets.DatasetDict):
                if len(table) != 1:
                    raise DataError(
                        f"{path} holds several splits ({', '.join(table)}); give the split's own folder, "
                        f"e.g. {p / next(iter(table))}"
                    )
                table = next(iter(table.values()))
        else:
            if p.stat().st_size == 0 or (_FORMATS[p.suffix] != "parquet" and not p.read_text(errors="replace").strip()):
                raise DataError(f"data file {path} is empty")
            if p.suffix == ".csv" and sum(1 for line in p.open(errors="replace") if line.strip()) < 2:
                raise DataError(f"data file {path} has no rows (a header at most)")
            cache = os.path.join(tempfile.gettempdir(), "rlhf-datasets")
            table = datasets.load_dataset(_FORMATS[p.suffix], data_files=str(p), split="train", cache_dir=cache)
    except DataError:
        raise
    except Exception as e:
        detail = _first_bad_json_line(p) if p.is_file() and _FORMATS.get(p.suffix) == "json" else None
        raise DataError(f"could not read data file {path}: {detail or f'{type(e).__name__}: {e}'}") from e
    if len(table) == 0:
        raise DataError(f"data file {path} has no rows")
    return table


def _text(value: Any, where: str, key_setting: str) -> str:
    if value is None:
        raise DataError(f"{where} is empty (null); every row needs it ({key_setting})")
    if not isinstance(value, str):
        raise DataError(f"{where} must be a string, got {type(value).__name__} {value!r:.60}")
    if not value.strip():
        raise DataError(f"{where} is an empty string")
    return value


def load_rows(path: str, data) -> list[Row]:
    """Every row of the file (or of each file a glob pattern matches, in name order), mapped
    through `data` (the `data:` config section) and checked."""
    return [row for file in expand(path) for row in _file_rows(file, data)]


_MISSING = object()


def _field(record: dict, key: str) -> Any:
    """`record[key]`, or for a dotted key a field of a struct column (verl keeps the ground truth
    in `reward_model.ground_truth`); `_MISSING` where there is no such field."""
    if key in record:
        return record[key]
    value = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _check_key(key: str, setting: str, first: dict, path: str, listed: str) -> None:
    if _field(first, key) is not _MISSING:
        return
    head = key.split(".")[0]
    if "." in key and head in first:
        value, walked = first, []
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                fields = ", ".join(sorted(value)) if isinstance(value, dict) else f"none ({type(value).__name__})"
                raise DataError(f"{path}, row 1: no field {part!r} in {'.'.join(walked)!r} ({setting}={key}); its fields "
                                f"are: {fields}")
            value, walked = value[part], [*walked, part]
    raise DataError(f"{path}, row 1: no column {key!r} ({setting}); the file's columns are: {listed}. "
                    f"Set {setting} to the right column name")


def _last_user(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def _file_rows(path: str, data) -> list[Row]:
    table = read_table(path)
    columns = set(table.column_names)
    listed = ", ".join(sorted(columns))
    first = table[0]
    conversations = data.messages_key is not None and data.messages_key in columns
    required = [(data.prompt_key, "data.prompt_key")] if not conversations else []
    if data.answer_key is not None:
        required.append((data.answer_key, "data.answer_key"))
    required += [(k, "data.extra_keys") for k in data.extra_keys]
    for key, setting in required:
        _check_key(key, setting, first, path, listed)
    rows = []
    for n, record in enumerate(table, 1):
        at = f"{path}, row {n}"
        messages = context = None
        if conversations and record.get(data.messages_key) is not None:
            messages = check_messages(record[data.messages_key], f"{at}, column {data.messages_key!r}")
        value = _field(record, data.prompt_key)
        if messages is not None and (value is None or value is _MISSING):
            prompt = _last_user(messages)
        elif isinstance(value, (list, tuple)):
            turns = check_context(value, f"{at}, column {data.prompt_key!r}")
            context = turns if messages is None else None
            prompt = _last_user(turns)
        else:
            value = None if value is _MISSING else value
            prompt = _text(value, f"{at}, column {data.prompt_key!r}", "data.prompt_key")
        answer = None
        if data.answer_key is not None:
            answer = _field(record, data.answer_key)
            if answer is None or answer is _MISSING or (isinstance(answer, str) and not answer.strip()):
                raise DataError(f"{at}, column {data.answer_key!r}: the ground truth is empty (data.answer_key)")
        response = None
        value = _field(record, data.response_key) if data.response_key is not None else None
        if value is not None and value is not _MISSING:
            where = f"{at}, column {data.response_key!r}"
            if isinstance(value, (list, tuple)):  # TRL's conversational completion: one assistant message
                turns = check_messages(value, where)
                if len(turns) != 1:
                    raise DataError(f"{where}: a conversational response must be one assistant message, got "
                                    f"{len(turns)} messages")
                value = turns[0]["content"]
            response = _text(value, where, "data.response_key")
        rows.append(Row(prompt=prompt, answer=answer, response=response, messages=messages,
                        extra={k: _field(record, k) for k in data.extra_keys}, origin=at, context=context))
    return rows


def eval_name(path: str, taken: set[str]) -> str:
    """A short name for an eval file or pattern in metric keys: its stem without glob characters
    or the Hub's shard suffix (`test-*.parquet`, `test-00000-of-00001.parquet`: `test`), or its
    path if the stem is taken."""
    stem = _SHARD.sub("", Path(path).name.split(".")[0])
    stem = re.sub(r"[-_.]*[*?\[\]]+.*$", "", stem) or stem
    return stem if stem not in taken else path
