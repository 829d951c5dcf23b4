"""Ways to break a valid event record, each with the DLQ reason the codec must give.

Used by `generate` (malformed_share) so the DLQ path is exercised end to end,
and by tests as a second bad-input corpus next to tests/data/bad_inputs.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from stream_app.codec import DlqReason, encode_event, event_key
from stream_app.events import Event, EventKind, KeyValue
from stream_app.sources.records import RawRecord


@dataclass(frozen=True, slots=True)
class Corruption:
    """`apply(event)` -> (key, value) that the codec refuses with `reason`."""

    name: str
    reason: DlqReason
    apply: Callable[[Event], KeyValue]


def _fields(event: Event, **changes: object) -> KeyValue:
    obj = orjson.loads(encode_event(event))
    obj.update(changes)
    return event_key(event), orjson.dumps({k: v for k, v in obj.items() if v is not _DROP})


_DROP = object()


def _value(event: Event) -> bytes:
    return encode_event(event)


CORRUPTIONS: tuple[Corruption, ...] = (
    Corruption("not_json", DlqReason.NOT_JSON, lambda e: (event_key(e), b"{oops")),
    Corruption("truncated", DlqReason.NOT_JSON, lambda e: (event_key(e), _value(e)[:-7])),
    Corruption("array", DlqReason.NOT_OBJECT, lambda e: (event_key(e), b"[1, 2, 3]")),
    Corruption("missing_item", DlqReason.MISSING_FIELD, lambda e: _fields(e, item_id=_DROP)),
    Corruption("empty_item", DlqReason.EMPTY_ID, lambda e: _fields(e, item_id="")),
    Corruption("long_item", DlqReason.ID_TOO_LONG, lambda e: _fields(e, item_id="x" * 300)),
    Corruption("ctrl_item", DlqReason.BAD_ID_CHARS, lambda e: _fields(e, item_id="i\x001")),
    Corruption("neg_ts", DlqReason.BAD_TIMESTAMP, lambda e: _fields(e, ts=-1)),
    Corruption("str_ts", DlqReason.BAD_TIMESTAMP, lambda e: _fields(e, ts="yesterday")),
    Corruption("extra", DlqReason.UNKNOWN_FIELD, lambda e: _fields(e, score=1)),
    Corruption(
        "nan_ts",
        DlqReason.NON_FINITE,
        lambda e: (event_key(e), _value(e).replace(b'"ts":', b'"ts":NaN,"x":')),
    ),
    Corruption("no_key", DlqReason.MISSING_KEY, lambda e: (None, _value(e))),
    Corruption("other_key", DlqReason.KEY_MISMATCH, lambda e: (b"someone-else", _value(e))),
    Corruption("bad_utf8", DlqReason.BAD_UTF8, lambda e: (event_key(e), b'{"event_id":"\xff"}')),
    Corruption("null_value", DlqReason.MISSING_VALUE, lambda e: (event_key(e), None)),
)


def corrupt(event: Event, how: Corruption) -> RawRecord:
    """The malformed record `how` makes of `event`, on the event's own topic."""
    key, value = how.apply(event)
    return RawRecord(kind=event.kind, key=key, value=value, expected_reason=how.reason)


WRONG_TOPIC = Corruption(
    "price_on_clicks",
    DlqReason.WRONG_TOPIC,
    lambda e: _fields(e, price=9.99),
)
"""Only meaningful for clicks (purchases may carry a price), so not in CORRUPTIONS."""


def corrupt_click(event: Event) -> RawRecord:
    """A click that carries a purchase-only field: the codec says wrong_topic."""
    if event.kind is not EventKind.CLICK:
        raise ValueError("wrong_topic corruption applies to clicks only")
    return corrupt(event, WRONG_TOPIC)
