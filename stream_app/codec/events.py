"""Click / purchase values <-> `Event` (schemas click.v1.json, purchase.v1.json).

Two equivalent validators: the compiled schema, and a hand-written fast check
whose bounds and id pattern are read from the same schema files. The fast
check only ever *accepts*; anything it does not accept goes through the schema,
which gives the precise reason. tests/unit/test_codec_fastpath.py checks that
both accept exactly the same values; bench/codec_speed.py measures both.
"""

from __future__ import annotations

import math
from typing import Any

import fastjsonschema
import orjson

from stream_app.codec.exceptions import DecodeError, DlqReason, EncodeError, SchemaError
from stream_app.codec.fastcheck import ID_MAX_LEN, fast_id, fast_int, fast_str_ids
from stream_app.codec.schemas import Schema, error_for, schema
from stream_app.codec.wire import (
    EVENT_MAX_BYTES,
    check_key_matches,
    check_value,
    decode_key,
    id_str,
    parse_input,
)
from stream_app.events import Event, EventKind

_SCHEMAS: dict[EventKind, Schema] = {
    EventKind.CLICK: schema("click"),
    EventKind.PURCHASE: schema("purchase"),
}
_FIELDS = {k: frozenset(s.definition["properties"]) for k, s in _SCHEMAS.items()}
_REQUIRED = frozenset(_SCHEMAS[EventKind.CLICK].definition["required"])
_TS = _SCHEMAS[EventKind.CLICK].subschema("ts")
_QTY = _SCHEMAS[EventKind.PURCHASE].definition["properties"]["quantity"]
_PRICE = _SCHEMAS[EventKind.PURCHASE].definition["properties"]["price"]
TS_RANGE = (_TS["minimum"], _TS["exclusiveMaximum"])  # event time, ms: [min, end)
_RELEASED = _SCHEMAS[EventKind.CLICK].subschema("released_at")
RELEASED_RANGE = (_RELEASED["minimum"], _RELEASED["exclusiveMaximum"])
if _REQUIRED != {"event_id", "user_id", "item_id", "ts"}:
    raise SchemaError(f"click.v1.json requires {sorted(_REQUIRED)}: update codec/events.py")


def decode_event(value: bytes | None, key: bytes | None, kind: EventKind) -> Event:
    """Decode and validate one record of the `kind` topic; the key must be the user id.

    Raises `DecodeError` (never anything else) with the DLQ reason.
    """
    value = check_value(value, EVENT_MAX_BYTES)
    key_text = decode_key(key)
    event = event_from_object(parse_input(value), kind)
    check_key_matches(key_text, event.user_id, "user_id")
    return event


def decode_id_key(key: bytes | None) -> str:
    """A Kafka key that is an id on its own (a forget request's user), by the id rules.

    Raises `DecodeError`: missing_key, bad_utf8, id_too_long or bad_id_chars.
    """
    text = decode_key(key)
    if fast_id(text) is None:
        reason = DlqReason.ID_TOO_LONG if len(text) > ID_MAX_LEN else DlqReason.BAD_ID_CHARS
        raise DecodeError(reason, f"key {text[:64]!r} is not an id (1-{ID_MAX_LEN} "
                          "characters, no control characters)")
    return text


CONTEXT_MAX_DEPTH = 32
"""Deepest nesting of an event's free-form `context` (objects and arrays, the context
itself level 1). orjson reads 1,024 levels but writes 255: a deeper context passed the
topic's checks, yet `replay` stopped with a traceback re-encoding such a file line; and
a reader that walks the value recursively (as `state`'s did, see STATE_MAX_DEPTH) may
run out of stack."""


def _nested_deeper(value: Any, levels: int) -> bool:
    """True when `value` nests objects or arrays more than `levels` deep (no recursion).

    >>> _nested_deeper({"a": [1, {"b": 2}]}, 3), _nested_deeper({"a": [1, {"b": {}}]}, 3)
    (False, True)
    """
    level = [value]
    for _ in range(levels):
        level = [v for c in level for v in (c.values() if isinstance(c, dict) else c)
                 if isinstance(v, _CONTAINERS)]
        if not level:
            return False
    return True


_CONTAINERS = (dict, list, tuple)
"""What JSON writes as an object or an array: orjson takes dict subclasses and tuples too,
so an encoder's checks must look inside them (a tuple 40 deep got past them)."""


def _context_problem(value: Any) -> DlqReason | None:
    """Why orjson must not write this context, in one walk: TOO_LARGE when it holds more
    elements than an event's bytes could (each takes at least one byte of JSON), as a
    context that refers to itself, or shares lists into a huge tree, does (the walks
    and orjson ran without end); NON_FINITE for a NaN or infinite float (written as
    null: the value would change without a word).

    >>> loop: dict[str, Any] = {}; loop["self"] = loop
    >>> _context_problem(loop), _context_problem({"a": [1.5, {"b": float("nan")}]})
    (<DlqReason.TOO_LARGE: 'too_large'>, <DlqReason.NON_FINITE: 'non_finite'>)
    >>> _context_problem({"a": [1.5]}) is None
    True
    """
    budget, todo = EVENT_MAX_BYTES, [value]
    while todo:  # counted one container at a time: a level built whole could not be held
        budget -= 1
        item = todo.pop()
        if isinstance(item, _CONTAINERS):
            if len(item) > budget:
                return DlqReason.TOO_LARGE
            todo.extend(item.values() if isinstance(item, dict) else item)
        elif isinstance(item, float) and not math.isfinite(item):
            return DlqReason.NON_FINITE
        if budget < 0:
            return DlqReason.TOO_LARGE
    return None


def parse_event(value: bytes | None, kind: EventKind) -> Event:
    """Like `decode_event` but without a Kafka key (files, replays)."""
    return event_from_object(parse_input(check_value(value, EVENT_MAX_BYTES)), kind)


def event_from_object(obj: Any, kind: EventKind, *, fast: bool = True) -> Event:
    """Validate an already-parsed value; `fast=False` forces the schema validator."""
    if fast:
        event = fast_event(obj, kind)
        if event is not None:
            return event
    return schema_event(obj, kind)


def schema_event(obj: Any, kind: EventKind) -> Event:
    """Validate with the compiled schema, mapping its failure to a `DecodeError`."""
    s = _SCHEMAS[kind]
    try:
        s.validate(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise error_for(exc, s.name) from exc
    context = obj.get("context")
    if context is not None and _nested_deeper(context, CONTEXT_MAX_DEPTH):
        raise DecodeError(DlqReason.SCHEMA,
                          f"context is nested over {CONTEXT_MAX_DEPTH} levels")
    quantity, price, released = obj.get("quantity"), obj.get("price"), obj.get("item_released_at")
    return Event(
        event_id=id_str(obj["event_id"]),
        user_id=id_str(obj["user_id"]),
        item_id=id_str(obj["item_id"]),
        ts=int(obj["ts"]),
        kind=kind,
        quantity=None if quantity is None else int(quantity),
        price=None if price is None else float(price),
        item_released_at=None if released is None else int(released),
        context=context,
    )


def fast_event(obj: Any, kind: EventKind) -> Event | None:
    """The hand-written check: an `Event` if the schema would accept `obj`, else None."""
    if type(obj) is not dict or not obj.keys() <= _FIELDS[kind]:
        return None
    get = obj.get  # a missing field reads as None, which no check accepts
    event_id, user_id, item_id, ts = get("event_id"), get("user_id"), get("item_id"), get("ts")
    if type(event_id) is str and type(user_id) is str and type(item_id) is str:
        if not fast_str_ids(event_id, user_id, item_id):
            return None
    else:
        event_id, user_id, item_id = fast_id(event_id), fast_id(user_id), fast_id(item_id)
        if event_id is None or user_id is None or item_id is None:
            return None
    if type(ts) is not int or not TS_RANGE[0] <= ts < TS_RANGE[1]:
        ts = fast_int(ts, *TS_RANGE, hi_exclusive=True)
        if ts is None:
            return None
    if len(obj) == 4:
        return Event(event_id=event_id, user_id=user_id, item_id=item_id, ts=ts, kind=kind)
    return _fast_optional(obj, kind, event_id, user_id, item_id, ts)


def _fast_optional(
    obj: dict[str, Any], kind: EventKind, event_id: str, user_id: str, item_id: str, ts: int
) -> Event | None:
    # An optional field given as null is absent (Jackson and Go write nulls by default).
    context = obj.get("context")
    if context is not None and (type(context) is not dict
                                or _nested_deeper(context, CONTEXT_MAX_DEPTH)):
        return None  # the schema path names why
    quantity = price = released = None
    if obj.get("quantity") is not None:
        quantity = fast_int(obj["quantity"], _QTY["minimum"], _QTY["maximum"])
        if quantity is None:
            return None
    if obj.get("price") is not None:
        raw = obj["price"]
        if type(raw) not in (int, float) or not _PRICE["minimum"] <= raw <= _PRICE["maximum"]:
            return None
        price = float(raw)
    if obj.get("item_released_at") is not None:
        released = fast_int(obj["item_released_at"], *RELEASED_RANGE, hi_exclusive=True)
        if released is None:
            return None
    return Event(
        event_id=event_id, user_id=user_id, item_id=item_id, ts=ts, kind=kind,
        quantity=quantity, price=price, item_released_at=released, context=context,
    )  # fmt: skip


def encode_event(event: Event) -> bytes:
    """The JSON value for `event`'s topic (its key is `event.user_id.encode()`).

    `EncodeError` for an event the topic's readers would dead-letter (an id, time,
    quantity or price out of the schema's bounds, a value over the size limit): a
    producer learns of it here, not from the DLQ later.
    """
    obj: dict[str, Any] = {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "item_id": event.item_id,
        "ts": event.ts,
    }
    for name, field in (("quantity", event.quantity), ("price", event.price),
                        ("item_released_at", event.item_released_at),
                        ("context", event.context)):
        if field is not None:
            obj[name] = field
    # orjson writes NaN as null: the value would change without a word
    if isinstance(event.price, float) and not math.isfinite(event.price):
        raise EncodeError(f"event {event.event_id!r}: price must be finite",
                          reason=DlqReason.NON_FINITE)
    problem = None if event.context is None else _context_problem(event.context)
    if problem is DlqReason.TOO_LARGE:
        raise EncodeError(f"event {event.event_id!r}: context holds more elements than "
                          f"{EVENT_MAX_BYTES} bytes of JSON could (does it refer to itself?)",
                          reason=problem)
    if problem is DlqReason.NON_FINITE:
        raise EncodeError(f"event {event.event_id!r}: context must hold finite numbers only",
                          reason=problem)
    try:
        if not _surely_valid(event):
            event_from_object(obj, event.kind)  # what every reader will check, checked here
        value = orjson.dumps(obj)
    except DecodeError as err:
        raise EncodeError(f"event {event.event_id!r}: {err}", reason=err.reason) from err
    except orjson.JSONEncodeError as exc:  # a lone surrogate, a type JSON has not
        reason = DlqReason.BAD_UTF8 if "surrogates" in str(exc) else DlqReason.WRONG_TYPE
        raise EncodeError(f"event {event.event_id!r}: {exc}", reason=reason) from exc
    if len(value) > EVENT_MAX_BYTES:
        raise EncodeError(f"event {event.event_id!r}: the value would be {len(value)} bytes "
                          f"(ids as strings, numbers as JSON writes them), limit "
                          f"{EVENT_MAX_BYTES}", reason=DlqReason.TOO_LARGE)
    return value


def _surely_valid(event: Event) -> bool:
    """True for an event whose fields the schema accepts, read off the typed `Event`.

    Cheaper than re-checking the encoded value as a reader does; False only means "ask
    the full check", which names the reason.
    """
    quantity, price, released = event.quantity, event.price, event.item_released_at
    if event.kind is not EventKind.PURCHASE and (quantity is not None or price is not None):
        return False  # the reader names it (wrong_topic)
    return (type(event.ts) is int and TS_RANGE[0] <= event.ts < TS_RANGE[1]
            and type(event.event_id) is str and type(event.user_id) is str
            and type(event.item_id) is str
            and fast_str_ids(event.event_id, event.user_id, event.item_id)
            and (quantity is None
                 or (type(quantity) is int and _QTY["minimum"] <= quantity <= _QTY["maximum"]))
            and (price is None or (type(price) in (int, float)
                                   and _PRICE["minimum"] <= price <= _PRICE["maximum"]))
            and (released is None or (type(released) is int
                                      and RELEASED_RANGE[0] <= released < RELEASED_RANGE[1]))
            and (event.context is None or (type(event.context) is dict and not _nested_deeper(
                event.context, CONTEXT_MAX_DEPTH))))


def event_key(event: Event) -> bytes:
    """Kafka key of an event: the user id, so one user's events stay in one partition."""
    return event.user_id.encode("utf-8")
