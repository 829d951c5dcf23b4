"""Events from JSON Lines files (`.gz` too): one event value per line, validated by the codec.

A line may carry `"kind": "click" | "purchase"` (removed before validation,
since the topic, not the value, says the kind on Kafka); lines without it use
the reader's `kind`. Blank lines are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from stream_app.codec import DecodeError, DlqReason, EncodeError, encode_event
from stream_app.codec.events import event_from_object
from stream_app.codec.wire import EVENT_MAX_BYTES, check_value, parse_input, shown
from stream_app.events import Event, EventKind
from stream_app.sources._files import nonempty, numbered_lines
from stream_app.sources.records import SourceError


def read_jsonl(path: Path | str, *, kind: EventKind | None = None) -> Iterator[Event]:
    """Validated events; the first bad line raises `SourceError` (file, line, reason)."""
    path = Path(path)
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            yield _event(line, kind)
        except DecodeError as err:
            raise SourceError(path, number, err) from err


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """`numbered_lines` without their line ending (it is not part of the value, and
    counted towards the size bound it refused a value of exactly the bound), and without
    a UTF-8 byte order mark before the first (editors on Windows write one; it is no
    JSON)."""
    for number, line in nonempty(path, numbered_lines(path)):
        line = line.rstrip(b"\r\n")
        if number == 1 and line.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise SourceError(path, 1, "the file is UTF-16 (Windows PowerShell's > writes it), "
                              "not UTF-8: save it as UTF-8")
        yield number, line.removeprefix(b"\xef\xbb\xbf") if number == 1 else line


def write_jsonl(path: Path | str, events: Iterator[Event] | list[Event]) -> int:
    """Write events with their kind, one per line; returns how many were written."""
    count = 0
    with Path(path).open("wb") as handle:
        for event in events:
            obj = orjson.loads(encode_event(event))
            handle.write(orjson.dumps({"kind": event.kind.value, **obj}) + b"\n")
            count += 1
    return count


LINE_MAX_BYTES = 4 * EVENT_MAX_BYTES
"""A line may hold `kind`, spaces and escapes (`\\u00e9`: 6 bytes, 2 once encoded) that
the value sent does not; that value is held to EVENT_MAX_BYTES (`encode_event`, below).
Held to it here, a line whose value the topic takes was refused."""


def _event(line: bytes, kind: EventKind | None) -> Event:
    try:
        obj = parse_input(check_value(line, LINE_MAX_BYTES))
    except DecodeError as err:
        if line.lstrip().startswith(b"["):  # the first line of a pretty-printed array
            raise DecodeError(err.reason, f"{err.detail}; a JSON array file is not JSON "
                              "lines (one event object per line)") from err
        if line.strip() == b"{":  # the first line of a pretty-printed object
            raise DecodeError(err.reason, f"{err.detail}; an object over several lines is "
                              "not JSON lines (one event object per line)") from err
        raise
    if not isinstance(obj, dict):  # said before the kind: --kind would not help
        raise DecodeError(DlqReason.NOT_OBJECT, f"a line must be one JSON object, got "
                          f"{type(obj).__name__} (a JSON array file is not JSON lines)")
    if "kind" in obj:
        raw_kind = obj.pop("kind")
        # Only a string is tried: the enum's own error message is the value's repr(),
        # which raised RecursionError for a kind nested 1,000 deep.
        if raw_kind not in ("click", "purchase"):
            raise DecodeError(DlqReason.WRONG_TYPE,
                              f"kind {shown(raw_kind)} is not click/purchase")
        kind = EventKind(raw_kind)
    if kind is None:
        raise DecodeError(DlqReason.MISSING_FIELD, "line has no \"kind\" (click or purchase) "
                          "and no default kind was given (replay --kind)")
    event = event_from_object(obj, kind)
    # The topic gets the event re-encoded (ids as strings, numbers as orjson writes them:
    # 1e15 is 1000000000000000.0), which can pass the bound that the line was under; the
    # trainer would dead-letter it as too large.
    try:
        encode_event(event)
    except EncodeError as err:
        raise DecodeError(err.reason or DlqReason.SCHEMA, str(err)) from err
    return event
