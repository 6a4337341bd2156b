"""Problem records and the one reader for every input format.

A `Problem` has `id`, `problem`, `answer` and optional `solution` (oracle) and `source`, plus
the input record kept whole (`record`) so later files can carry the user's own columns.
`read_problems` takes JSONL, JSON, Parquet, CSV, a `datasets.save_to_disk` directory or
`hf:NAME[:SPLIT]`, maps columns with a `FieldMap` (dotted paths reach nested columns), and
raises one `PopeError` naming the file, the line and the field for anything it can't use.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pope_cli.shared.config import FieldMap
from pope_cli.shared.errors import PopeError, where

PREFIX_FIELDS = ("prefix", "prefix_fraction")

# Far beyond any model's context (about 250k tokens): a longer field is a scraping accident, and
# tokenizing it would stall the stage for minutes before failing anyway.
MAX_TEXT_CHARS = 1_000_000


@dataclass
class Problem:
    id: str
    problem: str
    answer: str
    solution: str | None = None
    source: str | None = None
    record: dict = field(default_factory=dict, repr=False)

    def fields(self) -> dict:
        """The input record plus the canonical fields, so later stages read it with defaults.

        This is also the record a reward function sees.
        """
        extra = {k: v for k, v in (("solution", self.solution), ("source", self.source)) if v is not None}
        return {**self.record, "id": self.id, "problem": self.problem, "answer": self.answer, **extra}


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` in text, with balanced braces, or None."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth, i = 0, start + len("\\boxed")
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1:j]
        start = text.rfind("\\boxed{", 0, start)
    return None


def stable_id(problem: str) -> str:
    """An id derived from the problem text, the same on every machine and run."""
    return hashlib.sha256(problem.encode("utf-8")).hexdigest()[:16]


def get_path(record: dict, path: str) -> Any:
    """`record["a"]["b"]` for path "a.b"; None when any step is missing."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _text(value: Any, loc: str, name: str, *, chat_ok: bool = False) -> str | None:
    """A text field as str (numbers become text); chat messages give their last user turn."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise PopeError(f"{loc}: field '{name}' is a boolean, expected text")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS:
            raise PopeError(f"{loc}: field '{name}' is {len(value):,} characters long; the limit is {MAX_TEXT_CHARS:,}")
        return value
    if chat_ok and isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        users = [m["content"] for m in value if m.get("role", "user") == "user"]
        if users and isinstance(users[-1], str):
            return _text(users[-1], loc, name)
    raise PopeError(f"{loc}: field '{name}' is a {type(value).__name__}, expected text")


def to_problem(record: Any, fields: FieldMap, loc: str) -> Problem:
    """Map one raw record onto a Problem, or raise a PopeError at `loc`."""
    if not isinstance(record, dict):
        raise PopeError(f"{loc}: expected a JSON object, got {type(record).__name__}")
    problem = _text(get_path(record, fields.problem), loc, fields.problem, chat_ok=True)
    if problem is None:
        raise PopeError(f"{loc}: missing field '{fields.problem}' (set --problem-field)")
    if not problem.strip():
        raise PopeError(f"{loc}: field '{fields.problem}' is empty")
    solution = _text(get_path(record, fields.solution), loc, fields.solution)
    answer = _text(get_path(record, fields.answer), loc, fields.answer)
    if answer is None and solution:
        answer = last_boxed(solution)
    if answer is None or not answer.strip():
        raise PopeError(f"{loc}: missing field '{fields.answer}' and no \\boxed{{}} answer in '{fields.solution}' (set --answer-field)")
    raw_id = get_path(record, fields.id)
    pid = stable_id(problem) if raw_id is None else _text(raw_id, loc, fields.id)
    source = get_path(record, fields.source)
    return Problem(id=pid, problem=problem, answer=answer.strip(), solution=solution,
                   source=source if isinstance(source, str) else None, record=record)


def read_problems(spec: str, fields: FieldMap | None = None) -> list[Problem]:
    """Read and validate every problem of a file, saved dataset or `hf:NAME[:SPLIT]`."""
    fields = fields or FieldMap()
    problems, seen = [], {}
    for loc, record in iter_raw_records(spec):
        if isinstance(record, dict) and all(k in record for k in PREFIX_FIELDS):
            raise PopeError(f"{loc}: this is a prefixes file (from `pope make-prefixes`); this stage takes problems")
        item = to_problem(record, fields, loc)
        if item.id in seen:
            raise PopeError(f"{loc}: field '{fields.id}': duplicate id {item.id!r} (first at {seen[item.id]})")
        seen[item.id] = loc
        problems.append(item)
    if not problems:
        raise PopeError(f"{spec}: no records")
    _check_named_fields(spec, fields, problems)
    return problems


def _check_named_fields(spec: str, fields: FieldMap, problems: list[Problem]) -> None:
    """A field the user named (`--answer-field gold`) that no record has is a typo, not an optional
    column: without this the answer would silently come from the solution's \\boxed{}, the id from a hash."""
    default = FieldMap()
    for flag, name, usual in (("--answer-field", fields.answer, default.answer),
                              ("--solution-field", fields.solution, default.solution), ("--id-field", fields.id, default.id)):
        if name != usual and all(get_path(p.record, name) is None for p in problems):
            raise PopeError(f"{flag}: no record of {spec} has a field '{name}'", exit_code=2)


def iter_raw_records(spec: str) -> Iterator[tuple[str, Any]]:
    """Yield (location, raw record) pairs; the location names file and line for errors."""
    if spec.startswith("hf:"):
        yield from _iter_hub(spec)
        return
    path = Path(spec)
    if not path.exists():
        raise PopeError(f"{spec}: no such file or directory")
    if path.is_dir():
        yield from _iter_saved_dataset(path)
        return
    suffix = path.suffix.lower()
    readers = {".jsonl": _iter_jsonl, ".ndjson": _iter_jsonl, ".json": _iter_json,
               ".parquet": _iter_parquet, ".csv": _iter_csv}
    if suffix not in readers:
        raise PopeError(f"{spec}: unknown file type {suffix!r} (use .jsonl, .json, .parquet, .csv, a saved dataset directory or hf:NAME)")
    yield from readers[suffix](path)


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            loc = where(path, number)
            try:
                # A byte-order mark (Windows editors, Excel) is read as nothing.
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise PopeError(f"{loc}: not valid UTF-8 (byte {error.start})") from None
            if not line.strip():
                continue
            try:
                yield loc, json.loads(line)
            except json.JSONDecodeError as error:
                raise PopeError(f"{loc}: malformed JSON ({error.msg} at column {error.colno})") from None


def _iter_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise PopeError(f"{path}: not valid UTF-8 (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise PopeError(f"{where(path, error.lineno)}: malformed JSON ({error.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise PopeError(f"{path}: expected a JSON list of records (or {{\"data\": [...]}})")
    for index, record in enumerate(data):
        yield f"{path}: record {index}", record


def _iter_csv(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # Excel's "CSV UTF-8" starts with a BOM
            reader = csv.DictReader(handle)
            for record in reader:
                loc = where(path, reader.line_num)
                if None in record:
                    raise PopeError(f"{loc}: malformed CSV row: {len(record) - 1 + len(record[None])} fields where the "
                                    f"header has {len(reader.fieldnames)} (a comma inside a field? quote it: \"...\")")
                if None in record.values():
                    raise PopeError(f"{loc}: malformed CSV row: {sum(v is not None for v in record.values())} fields "
                                    f"where the header has {len(reader.fieldnames)}")
                yield loc, {k: v for k, v in record.items() if v != ""}
    except UnicodeDecodeError as error:
        raise PopeError(f"{path}: not valid UTF-8 (byte {error.start})") from None
    except csv.Error as error:
        raise PopeError(f"{path}: malformed CSV ({error})") from None


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise PopeError(f"{path}: not a readable Parquet file ({error})") from None
    for index, record in enumerate(table.to_pylist()):
        yield f"{path}: row {index}", record


def _iter_saved_dataset(path: Path) -> Iterator[tuple[str, Any]]:
    if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        raise PopeError(f"{path}: is a directory, not a problem file or a dataset saved with datasets.save_to_disk")
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        split = "train" if "train" in dataset else next(iter(dataset))
        dataset = dataset[split]
    for index, record in enumerate(dataset):
        yield f"{path}: row {index}", record


def _iter_hub(spec: str) -> Iterator[tuple[str, Any]]:
    name, _, split = spec[3:].partition(":")
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, split=split or "train")
    except Exception as error:  # hub, network and config errors all surface here
        raise PopeError(f"{spec}: could not load dataset ({type(error).__name__}: {error})") from None
    for index, record in enumerate(dataset):
        yield f"{spec}: row {index}", record


def read_prefix_records(path: str) -> list[dict]:
    """Read a `prefixes.jsonl` written by `pope make-prefixes`; each record has a prefix, null only
    for a problem kept without a solution (`--no-solution keep`: trained and evaluated unguided only)."""
    records, seen = [], set()
    for loc, record in iter_raw_records(path):
        if not isinstance(record, dict):
            raise PopeError(f"{loc}: expected a JSON object, got {type(record).__name__}")
        for name in ("id", "problem", "answer", "prefix"):
            unguided_only = name == "prefix" and record.get("status") == "no_solution" and "prefix" in record
            if record.get(name) is None and not unguided_only:
                hint = " (not a prefixes file: run `pope make-prefixes` first)" if name == "prefix" else ""
                raise PopeError(f"{loc}: missing field '{name}'{hint}")
            record[name] = _text(record[name], loc, name)
        if not record["problem"].strip():
            raise PopeError(f"{loc}: field 'problem' is empty")
        if record["id"] in seen:
            raise PopeError(f"{loc}: field 'id': duplicate id {record['id']!r}")
        seen.add(record["id"])
        records.append(record)
    if not records:
        raise PopeError(f"{path}: no records")
    return records


def written_solution(record: dict) -> str:
    """A record's written oracle solution, stripped; "" when it has none (or only whitespace)."""
    return str(record.get("solution") or "").strip()
