"""A task's items from a data file beside tower.toml: one item per line (JSONL objects, or
CSV rows under a header), each item's fields filling the task's prompt template.

A million tasks live in a data file, not in TOML. The file is read twice and never held:
once when the project loads, to count and check every line (a bad line is one error naming
the file and line, before anything runs), then line by line as the feed spawns copies.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_LINE = 1 << 20  # a line longer than 1 MiB is not an item, it is a mistake
MAX_FIELD = 64  # field names of at most this many characters; the template names them


class ItemsError(ValueError):
    """A line of an items file that is not an item (the message names the line)."""


def _fields(obj: Any, line: int) -> dict[str, str]:
    if not isinstance(obj, dict) or not obj:
        raise ItemsError(f"line {line}: expected a JSON object with fields, found {_kind(obj)}")
    out = {}
    for key, value in obj.items():
        if not key or len(key) > MAX_FIELD:
            raise ItemsError(f"line {line}: a field name must have 1 to {MAX_FIELD} characters")
        out[key] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return out


def _kind(obj: Any) -> str:
    return "an empty object" if obj == {} else type(obj).__name__.replace("NoneType", "null")


def read_items(path: Path) -> Iterator[dict[str, str]]:
    """The file's items in order, one at a time (ItemsError on the first bad line)."""
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix.lower() == ".csv":
            yield from _csv_items(f)
            return
        for line_no, line in enumerate(f, 1):
            if len(line) > MAX_LINE:
                raise ItemsError(f"line {line_no}: longer than {MAX_LINE:,} characters")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                where = f"{exc.msg} at column {exc.colno}" if exc.lineno == 1 else exc.msg
                raise ItemsError(f"line {line_no}: not valid JSON ({where})") from None
            except ValueError as exc:  # a number too long to convert
                raise ItemsError(f"line {line_no}: not valid JSON ({exc})") from None
            yield _fields(obj, line_no)


def _csv_items(f: Any) -> Iterator[dict[str, str]]:
    reader = csv.reader(f)
    header = _next_row(reader)
    if header is None:
        return
    if not all(h.strip() for h in header) or len(set(header)) != len(header):
        raise ItemsError("line 1: the header must name each column once")
    while (row := _next_row(reader)) is not None:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ItemsError(
                f"line {reader.line_num}: {len(row)} fields, expected {len(header)} "
                f"({', '.join(header)})"
            )
        yield dict(zip(header, row, strict=True))


def _next_row(reader: Any) -> list[str] | None:
    """The next CSV row, None at the end; a malformed one is an ItemsError naming its line."""
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        raise ItemsError(f"line {reader.line_num}: {exc}") from None


def count_items(path: Path) -> int:
    """Reads the whole file once, checking every line; ItemsError names the first bad one."""
    return sum(1 for _ in read_items(path))


def item_at(path: Path, n: int) -> dict[str, str] | None:
    """Item n (1-based), or None past the end: a resumed or previewed copy's fields. A
    JSONL file is counted to line n without decoding the lines before it (the file was
    checked whole at load), so a resume of a few hundred threads far into a large file
    takes a moment, not minutes."""
    if path.suffix.lower() == ".csv":
        for k, item in enumerate(read_items(path), 1):
            if k == n:
                return item
        return None
    with open(path, encoding="utf-8", newline="") as f:
        k = 0
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            k += 1
            if k == n:
                return _fields(json.loads(line), line_no)
    return None


def fill_item(value: Any, item: dict[str, str] | None) -> Any:
    """`{field}` replaced by the item's value in every string of a value (prompt, title,
    script); names the item does not have are left as written."""
    if not item:
        return value
    if isinstance(value, str):
        if "{" not in value:
            return value
        for key, field in item.items():
            value = value.replace("{" + key + "}", field)
        return value
    if isinstance(value, list):
        return [fill_item(v, item) for v in value]
    if isinstance(value, dict):
        return {k: fill_item(v, item) for k, v in value.items()}
    return value
