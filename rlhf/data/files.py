"""Data files as a source of rows, read with Hugging Face `datasets`: JSON lines (`.jsonl`,
`.json`), Parquet (`.parquet`), CSV (`.csv`) and folders written by `Dataset.save_to_disk`. A path
may be a glob pattern (`gsm8k/main/train-*.parquet`): a dataset downloaded from the Hub keeps each
split as shards named so, and the pattern reads them all, in name order.

Columns are mapped to the row protocol by the `data.*_key` settings. Every row is checked as it
is read; a bad one stops the run with the file, the row (1-based) and the column named.
"""

from __future__ import annotations

import difflib
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
# the Hub's shard suffix: train-00000-of-00004.parquet (older uploads add a hash: ...-of-00004-a09b74b3.parquet)
_SHARD = re.compile(r"-\d{5}-of-\d{5}(-[0-9a-f]{8,})?$")


def _saved(p: Path) -> bool:
    return p.is_dir() and any((p / name).is_file() for name in _SAVED)


def expand(path: str) -> list[str]:
    """The files (or saved folders) `path` names: itself, or the sorted matches of a glob pattern."""
    if Path(path).exists() or not glob.has_magic(path):  # a real name with [ or * in it is itself
        return [path]
    matches = sorted(m for m in glob.glob(path, recursive=True) if Path(m).is_file() or _saved(Path(m)))
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
        if p.is_dir() and not _saved(p):
            return _not_a_saved_folder(p)
        if p.is_file() and p.suffix not in _FORMATS:
            return f"{file}: unknown format {p.suffix!r}; use .jsonl/.json, .parquet, .csv or a folder written by datasets' save_to_disk"
    return None


def _data_files(folder: Path, depth: int = 3, most: int = 50) -> list[Path]:
    """Data files under `folder` (hidden folders skipped, `depth` levels, at most `most`): enough
    to name a pattern without walking a large tree during the config check."""
    found = []
    for root, dirs, files in os.walk(folder):
        level = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if level < depth else []
        found += [Path(root) / f for f in sorted(files) if Path(f).suffix in _FORMATS]
        if len(found) >= most:
            break
    return sorted(found)


def _not_a_saved_folder(folder: Path) -> str:
    found = _data_files(folder)
    if not found:
        return (f"{folder} is a folder but not one written by datasets' save_to_disk, and holds no "
                f".jsonl/.json/.parquet/.csv files")
    first = found[0]
    shard = _SHARD.sub("", first.stem)
    pattern = first.parent / (f"{shard}-*{first.suffix}" if shard != first.stem else first.name)
    listed = ", ".join(str(f.relative_to(folder)) for f in found[:6]) + (", ..." if len(found) > 6 else "")
    return (f"{folder} is a folder but not one written by datasets' save_to_disk; it holds data files ({listed}): "
            f"name the split's files, e.g. {pattern}")


def _csv_header(p: Path) -> list[str]:
    import csv

    with p.open(newline="", errors="replace") as f:
        return next(csv.reader(f))


def _csv_as_text(p: Path) -> dict:
    """Options that keep a CSV's cells as written ("007", "2.50", "NA"): pandas' guessing would
    turn answers into floats and "NA" into null. Every column (named by the header) is a string."""
    import datasets

    return {"features": datasets.Features({c: datasets.Value("string") for c in _csv_header(p)}), "keep_default_na": False}


def _has_rows(p: Path, header: bool) -> bool:
    """Whether a text file has a non-blank line (after a CSV's header), read no further than that."""
    with p.open(errors="replace") as f:
        lines = (line for line in f if line.strip())
        return next(lines, None) is not None and (not header or next(lines, None) is not None)


def _first_bad_json_line(path: Path) -> str | None:
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    return f"row {n} is not valid JSON ({e.msg}): {line.strip()[:80]!r}"
    return None


def _parquet(p: Path):
    """The Parquet file's reader (schema and row count read, no rows), refused when it has no rows."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(p)
    except Exception as e:
        raise DataError(f"could not read data file {p}: {type(e).__name__}: {e}") from e
    if parquet.metadata.num_rows == 0:
        raise DataError(f"data file {p} has no rows")
    return parquet


def _check_not_empty(p: Path, fmt: str) -> None:
    if p.stat().st_size == 0 or (fmt != "parquet" and not _has_rows(p, header=False)):
        raise DataError(f"data file {p} is empty")
    if fmt == "csv" and not _has_rows(p, header=True):
        raise DataError(f"data file {p} has no rows (a header at most)")
    if fmt == "parquet":
        _parquet(p)


def _several_splits(p: Path, splits: list[str]) -> DataError:
    return DataError(f"{p} holds several splits ({', '.join(splits)}); give the split's own folder, e.g. {p / splits[0]}")


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
                    raise _several_splits(p, list(table))
                table = next(iter(table.values()))
        else:
            fmt = _FORMATS[p.suffix]
            _check_not_empty(p, fmt)
            cache = os.path.join(tempfile.gettempdir(), "rlhf-datasets")
            table = datasets.load_dataset(fmt, data_files=glob.escape(str(p)), split="train", cache_dir=cache,
                                          **(_csv_as_text(p) if fmt == "csv" else {}))
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


def _present(value: Any) -> Any:
    return None if value is _MISSING else value


def _key_problem(key: str, setting: str, features: dict, path: str) -> str | None:
    """What is wrong with `key` as a column, or (dotted) a field of a struct column, by the file's
    schema (not by row 1, whose struct may be null), with the fix; None when it is there.
    `features` maps a column to its type; a struct's type is a mapping of its fields."""
    if key in features:
        return None
    parts = key.split(".")
    if len(parts) > 1 and parts[0] in features:
        feature = features
        for i, part in enumerate(parts):
            if not isinstance(feature, dict) or part not in feature:
                fields = ", ".join(sorted(feature)) if isinstance(feature, dict) else "none (it is not a struct)"
                return f"{path}: no field {part!r} in {'.'.join(parts[:i])!r} ({setting}={key}); its fields are: {fields}"
            feature = feature[part]
        return None
    near = difflib.get_close_matches(key, list(features), n=1)
    fix = f"Did you mean {setting}={near[0]}?" if near else f"Set {setting} to the right column name"
    return f"{path}, row 1: no column {key!r} ({setting}); the file's columns are: {', '.join(sorted(features))}. {fix}"


def _needed(data, features: dict) -> tuple[bool, list[tuple[str, str]]]:
    """Whether rows are conversations (data.messages_key names a column), and the (key, setting)
    pairs every row must have then."""
    conversations = data.messages_key is not None and data.messages_key in features
    required = [(data.prompt_key, "data.prompt_key")] if not conversations else []
    if data.answer_key is not None:
        required.append((data.answer_key, "data.answer_key"))
    return conversations, required + [(k, "data.extra_keys") for k in data.extra_keys]


def _sft_target_problem(features: dict, data, path: str) -> str | None:
    """Why an SFT stage finds no target column in the file (data.response_key, or a conversation
    in data.messages_key), with the fix; None when it has one."""
    keys = [(k, s) for k, s in ((data.response_key, "data.response_key"), (data.messages_key, "data.messages_key")) if k]
    if any(_key_problem(k, s, features, path) is None for k, s in keys):
        return None
    near = difflib.get_close_matches(data.response_key or "response", list(features), n=1)
    fix = f"Did you mean data.response_key={near[0]}?" if near else "Set data.response_key to the column of the answers to learn"
    named = [f"{s}={k!r}" for k, s in keys]
    which = (f"neither {named[0]} nor {named[1]} is a column of the file" if len(named) == 2 else
             f"{named[0]} is not a column of the file" if named else "data.response_key and data.messages_key are null")
    return (f"{path}: an SFT stage learns from a response or a conversation column, but {which} (its columns are: "
            f"{', '.join(sorted(features))}). {fix}")


def _check_columns(features: dict, data, path: str) -> bool:
    """That the file has every column `data` names; whether its rows are conversations."""
    conversations, required = _needed(data, features)
    for key, setting in required:
        problem = _key_problem(key, setting, features, path)
        if problem:
            raise DataError(problem)
    return conversations


def _merge(schema: dict, record: dict) -> dict:
    """`schema` (a column -> None, or a struct's fields) widened by one JSON row: a column seen in any row is one."""
    for k, v in record.items():
        if isinstance(v, dict):
            sub = schema.get(k)
            schema[k] = _merge(sub if isinstance(sub, dict) else {}, v)
        elif k not in schema:
            schema[k] = None
    return schema


def _json_schema(p: Path, data, sft: bool) -> dict | None:
    """The columns of a JSON-lines file, read row by row until every key `data` needs is there
    (a column of a JSON file may first appear in any row; row 1 is enough when the keys are
    right); None for a file that is not JSON lines of objects (a JSON list, an object over several
    lines), which is left to `datasets`."""
    schema: dict = {}
    with p.open(encoding="utf-8-sig", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                if not schema:
                    return None
                raise DataError(f"could not read data file {p}: row {n} is not valid JSON ({e.msg}): {line.strip()[:80]!r}")
            if not isinstance(record, dict):
                return None
            _merge(schema, record)
            _, required = _needed(data, schema)
            if not any(_key_problem(key, setting, schema, str(p)) for key, setting in required) and not (
                    sft and _sft_target_problem(schema, data, str(p))):
                break
    return schema


def _arrow_fields(fields) -> dict:
    import pyarrow as pa

    return {f.name: _arrow_fields(f.type) if pa.types.is_struct(f.type) else None for f in fields}


def _saved_fields(features: dict) -> dict:
    """dataset_info.json's features: a struct is a mapping of fields without a `_type`."""
    return {k: _saved_fields(v) if isinstance(v, dict) and "_type" not in v else None for k, v in features.items()}


def _schema(p: Path, data, sft: bool) -> dict | None:
    """The columns of one data file or saved folder, without reading its rows (JSON aside, see
    `_json_schema`); None where the layout is left to `datasets`."""
    if p.is_dir():
        if (p / "dataset_dict.json").is_file():
            splits = json.loads((p / "dataset_dict.json").read_text()).get("splits") or []
            if len(splits) != 1:
                raise _several_splits(p, splits)
            p = p / splits[0]
        try:
            return _saved_fields(json.loads((p / "dataset_info.json").read_text())["features"])
        except (OSError, ValueError, KeyError, AttributeError):
            return None
    fmt = _FORMATS[p.suffix]
    if p.stat().st_size == 0:
        raise DataError(f"data file {p} is empty")
    if fmt == "parquet":
        return _arrow_fields(_parquet(p).schema_arrow)
    _check_not_empty(p, fmt)
    return dict.fromkeys(_csv_header(p)) if fmt == "csv" else _json_schema(p, data, sft)


def check_columns(path: str, data, sft: bool = False) -> None:
    """Every file `path` names holds rows and the columns `data` (the `data:` config section)
    asks for (`sft`: the training files of an SFT stage, which also need a target column),
    judged from what the files say of themselves: a Parquet schema, a saved folder's
    dataset_info.json, a CSV header, the first JSON rows. This is the config check's: fast
    (pyarrow at most, not `datasets`, which takes seconds to import) and before anything is
    written. The rows themselves are checked when they are read (`load_rows`)."""
    for file in expand(path):
        features = _schema(Path(file), data, sft)
        if features is not None:
            _check_columns(features, data, file)
            problem = _sft_target_problem(features, data, file) if sft else None
            if problem:
                raise DataError(problem)


def _last_user(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def _file_rows(path: str, data) -> list[Row]:
    table = read_table(path)
    conversations = _check_columns(table.features, data, path)
    rows = []
    for n, record in enumerate(table, 1):
        at = f"{path}, row {n}"
        messages = context = None
        if conversations and record.get(data.messages_key) is not None:
            messages = check_messages(record[data.messages_key], f"{at}, column {data.messages_key!r}")
        value = _field(record, data.prompt_key)
        if messages is not None and (value is None or value is _MISSING or isinstance(value, (list, tuple))):
            prompt = _last_user(messages)  # the conversation is rendered; a prompt column in list form is not used
        elif isinstance(value, (list, tuple)):
            context = check_context(value, f"{at}, column {data.prompt_key!r}")
            prompt = _last_user(context)
        else:
            prompt = _text(_present(value), f"{at}, column {data.prompt_key!r}", "data.prompt_key")
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
                        extra={k: _present(_field(record, k)) for k in data.extra_keys}, origin=at, context=context,
                        tools=_tools(record.get("tools"), f"{at}, column 'tools'")))
    return rows


def _tools(value, where: str) -> list | None:
    """A row's tools (TRL's `tools` column: JSON schemas, or their JSON text as Parquet often holds
    them), for the chat template; None without."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise DataError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, dict) for t in value):
        raise DataError(f"{where}: tools must be a list of JSON schemas ({{type: function, function: {{name, "
                        f"description, parameters}}}}), got {value!r:.80}")
    return list(value)


def eval_name(path: str, taken: set[str]) -> str:
    """A short name for an eval file or pattern in metric keys: its stem up to any glob character,
    without the Hub's shard suffix (`test-*.parquet`, `test-00000-of-00001.parquet`: `test`), else
    its folder's name; its path if the name is taken."""
    head = re.split(r"[*?\[]", Path(path).name)[0]
    name = _SHARD.sub("", head.split(".")[0])
    if head != Path(path).name:  # cut at a glob character: drop a partial shard number too
        name = re.sub(r"[-_.]*\d*$", "", name)
    name = name.rstrip("-_.") or Path(re.split(r"[*?\[]", path)[0].rstrip("/") or ".").name
    return name if name and name not in taken else path
