"""Events from CSV files with the header `event_id,user_id,item_id,ts,kind[,quantity,price]`.

Cells are strings; `ts` and `quantity` must be integers (`2.0` is one, as in a
JSON value), `price` a number, all written as JSON writes them (so `1_000`, ` 5`
or `+5`, which Python's `int()` takes, are refused like the same value on the
topic), and empty `quantity` / `price` cells mean absent. Each row then goes through the
same validation as a Kafka value, so a file cannot smuggle in what the topic
would refuse. Extra columns are refused (the schemas forbid unknown fields).
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream_app.codec import DecodeError, DlqReason
from stream_app.codec.events import event_from_object
from stream_app.events import Event, EventKind
from stream_app.sources._files import numbered_lines
from stream_app.sources.records import SourceError

_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
"""JSON's number grammar (ASCII digits only: `int()` also takes other scripts' digits)."""

REQUIRED_COLUMNS = ("event_id", "user_id", "item_id", "ts", "kind")
OPTIONAL_COLUMNS = ("quantity", "price")


def read_csv(path: Path | str) -> Iterator[Event]:
    """Validated events, in file order; a bad row raises `SourceError` (line = the file
    line the row starts on: a quoted cell may span lines)."""
    path = Path(path)
    # utf-8-sig: a BOM (Excel's exports) is no field
    lines = _RowStarts(itertools.dropwhile(  # blank lines before the header: no header
        lambda numbered: not numbered[1].strip("\r\n"),
        numbered_lines(path, encoding="utf-8-sig")))
    reader = csv.DictReader(lines)
    try:
        _check_header(path, reader.fieldnames, lines.start)
        lines.next_row()
        for row in reader:
            if _spaces_only(row):
                lines.next_row()  # a line of spaces (an editor's last line): blank, as in JSONL
                continue
            try:
                yield _event(row)
            except DecodeError as err:
                if any("\n" in cell for cell in row.values() if isinstance(cell, str)):
                    err = DecodeError(err.reason, f"{err.detail}; a cell spans lines from "
                                      "here: an unclosed quote takes in the lines after it")
                raise SourceError(path, lines.start, err) from err
            lines.next_row()
    except csv.Error as exc:  # an unclosed quote, a cell over the csv module's size limit
        raise SourceError(path, lines.start, f"not CSV from here ({exc}); an unclosed quote "
                          "takes in the lines after it as one cell") from exc


def _spaces_only(row: dict[Any, Any]) -> bool:
    """A line of spaces alone: one cell, blank. `,,,,` (empty cells) stays a bad row.

    >>> _spaces_only({"a": "  ", "b": None}), _spaces_only({"a": "", "b": ""})
    (True, False)
    """
    first, *rest = row.values()
    return isinstance(first, str) and not first.strip() and all(c is None for c in rest)


class _RowStarts:
    r"""The file's lines for csv, noting the line the row being read starts on: csv counts
    only finished rows and skips blank lines, so counting from the last row's end named
    the first blank line before a bad row.

    >>> lines = _RowStarts(enumerate(["h\n", "\n", "\r\n", "a,\n"], start=1))
    >>> rows = csv.DictReader(lines); _ = rows.fieldnames; lines.next_row(); _ = next(rows)
    >>> lines.start
    4
    """

    def __init__(self, numbered: Iterator[tuple[int, str]]) -> None:
        self._numbered = numbered
        self.start = 1
        self._fresh = True

    def __iter__(self) -> Iterator[str]:
        for number, line in self._numbered:
            if self._fresh and line.strip("\r\n"):
                self.start, self._fresh = number, False
            yield line

    def next_row(self) -> None:
        self._fresh = True


def _check_header(path: Path, fields: Any, line: int) -> None:
    columns = list(fields or [])
    if not columns:
        raise SourceError(path, 1, f"the file is empty: a CSV needs the header "
                          f"{','.join(REQUIRED_COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    extra = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or extra:
        raise SourceError(path, line, f"header: missing {missing}, unknown {extra}")
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:  # csv.DictReader would keep the last cell of each silently
        raise SourceError(path, line, f"header: columns named twice {twice}")


def _event(row: dict[str, Any]) -> Event:
    if None in row:
        raise DecodeError(DlqReason.UNKNOWN_FIELD, "row has more cells than the header")
    short = [c for c in REQUIRED_COLUMNS if row.get(c) is None]  # "" is a cell, None none
    if short:
        raise DecodeError(DlqReason.MISSING_FIELD,
                          f"row has fewer cells than the header: no {', '.join(short)}")
    try:
        kind = EventKind(row["kind"])
    except ValueError as exc:
        raise DecodeError(
            DlqReason.WRONG_TYPE, f"kind {row['kind']!r} is not click/purchase"
        ) from exc
    obj: dict[str, Any] = {
        "event_id": row["event_id"],
        "user_id": row["user_id"],
        "item_id": row["item_id"],
        "ts": _number(row["ts"], int, DlqReason.BAD_TIMESTAMP, "ts"),
    }
    for column, convert in (("quantity", int), ("price", float)):
        cell = row.get(column)
        if cell not in (None, ""):
            obj[column] = _number(cell, convert, DlqReason.WRONG_TYPE, column)
    return event_from_object(obj, kind)


def _number(cell: str, convert: type[int] | type[float], reason: DlqReason, column: str) -> Any:
    """The cell as the topic would read it in a JSON value: an integer column also takes
    a number with a zero fraction (`2.0`, `1.7e12`; pandas writes an integer column with
    blanks as floats), as JSON Schema's `integer` does."""
    if convert is int and _INT.fullmatch(cell):
        try:
            return int(cell)  # exact at any size, where a float would round
        except ValueError as exc:  # over Python's 4,300 digits: far past the schema's range
            raise DecodeError(DlqReason.BAD_TIMESTAMP if column == "ts" else
                              DlqReason.OUT_OF_RANGE, f"{column}: an integer of "
                              f"{len(cell)} characters") from exc
    if not _NUMBER.fullmatch(cell):
        what = "an integer" if convert is int else "a number"
        raise DecodeError(reason, f"{column}: {cell!r} is not {what} as JSON writes it")
    value = float(cell)
    if not math.isfinite(value):  # 1e999
        raise DecodeError(DlqReason.NON_FINITE, f"{column}: {cell!r}")
    if convert is int:
        if not value.is_integer():
            raise DecodeError(reason, f"{column}: {cell!r} is not an integer")
        return int(value)
    return value
