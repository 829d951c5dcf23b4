"""Read plain or gzip-compressed input files line by line, the same way.

A file that cannot be read to its end (a truncated or corrupt `.gz`, bytes
that are not the expected text, an I/O error) stops the reader with a
`SourceError` naming the file and the line it reached, like a bad line: a
replay then reports what it had sent, instead of ending in a traceback.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TypeVar, overload

from stream_app.sources.records import SourceError

T = TypeVar("T")

READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)
"""What reading a file can raise (gzip.BadGzipFile is an OSError)."""

LINE_MAX = 16 * 1024 * 1024
"""Longest line read (bytes, or characters of a text file): a file that is one huge
line (a JSON array, newlines lost) stops at that line instead of filling memory.
An event's value is at most 64 KiB, so a line this long is no event anyway."""


def _open(path: Path, encoding: str | None) -> IO[Any]:
    if path.suffix.lower() == ".gz":
        if encoding is None:
            return gzip.open(path, "rb")  # type: ignore[return-value]  # a GzipFile reads bytes
        return gzip.open(path, "rt", encoding=encoding, newline="")
    if encoding is None:
        return path.open("rb")
    return path.open("r", encoding=encoding, newline="")


@overload
def numbered_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]: ...
@overload
def numbered_lines(path: Path, encoding: None = None) -> Iterator[tuple[int, bytes]]: ...
def numbered_lines(path: Path, encoding: str | None = None) -> Iterator[tuple[int, str | bytes]]:
    """(line number from 1, line) of `path`, gunzipping `*.gz`; bytes when `encoding` is None.

    >>> import tempfile, gzip; tmp = Path(tempfile.mkdtemp()) / "x.gz"
    >>> _ = tmp.write_bytes(gzip.compress(b"a\\nb\\n")[:-12])  # cut short
    >>> list(numbered_lines(tmp))
    Traceback (most recent call last):
    ...
    stream_app.sources.records.SourceError: ...x.gz:1: cannot read the file: ...
    """
    number = 0
    try:
        with _open(path, encoding) as handle:
            end: str | bytes = "" if encoding else b""
            lines = iter(lambda: handle.readline(LINE_MAX + 1), end)
            for number, line in enumerate(lines, start=1):
                if len(line) > LINE_MAX:
                    raise SourceError(path, number, f"the line is longer than {LINE_MAX:,} "
                                      f"{'characters' if encoding else 'bytes'}: the input is "
                                      "one record per line (a JSON array, or a file whose "
                                      "newlines were lost, is not)")
                yield number, line
    except UnicodeDecodeError as exc:  # raised a block ahead of the lines handed out
        number = _first_undecodable(path, encoding or "utf-8") or number + 1
        raise SourceError(path, number, f"cannot read the file: {_why(exc)}") from exc
    except READ_ERRORS as exc:
        raise SourceError(path, number + 1, f"cannot read the file: {_why(exc)}") from exc


def _first_undecodable(path: Path, encoding: str) -> int | None:
    """The number of the first line (split at newlines) that is not `encoding` text."""
    try:
        with _open(path, None) as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    line.decode(encoding)
                except UnicodeDecodeError:
                    return number
    except READ_ERRORS:
        return None
    return None


def nonempty(path: Path, lines: Iterator[tuple[int, T]]) -> Iterator[tuple[int, T]]:
    """`lines`, or a `SourceError` when the file holds none: an empty input (or a `.gz`
    cut to nothing, which gunzips to nothing) replayed as "0 events", exit 0, like a
    success (config review)."""
    empty = True
    for numbered in lines:
        empty = False
        yield numbered
    if empty:
        raise SourceError(path, 1, "the file is empty: there is nothing to replay")


def _why(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):  # latin-1 (MovieLens) decodes any byte
        return f"not UTF-8 text ({exc.reason}); save the file as UTF-8"
    if isinstance(exc, EOFError):
        return f"it ends early ({exc}): a truncated download or copy?"
    return str(exc)
