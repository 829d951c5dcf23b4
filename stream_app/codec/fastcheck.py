"""Hand-written equivalents of the schema's id / integer rules, for the hot path.

Every bound and the id pattern are read from the schema files, so the schema
stays the single source of truth; tests check both agree on a corpus and under
hypothesis. Each check returns the normalised value, or None where the schema
would refuse (the caller then runs the schema to learn the precise reason).
"""

from __future__ import annotations

import binascii
import re
from typing import Any

from stream_app.codec.exceptions import SchemaError
from stream_app.codec.schemas import schema
from stream_app.codec.wire import EXACT_FLOAT_INT

_ID = schema("click").subschema("id")
# fastjsonschema turns a final `$` into `\Z` (Python's `$` also matches before a
# trailing newline); do the same so both checks refuse "id\n".
_ID_PATTERN = re.compile(re.sub(r"\$$", r"\\Z", _ID["pattern"]))
_ID_MIN_LEN: int = _ID["minLength"]
ID_MAX_LEN: int = _ID["maxLength"]
_ID_MIN_INT: int = _ID["minimum"]
_ID_MAX_INT: int = _ID["maximum"]
# The pattern is "^[^<forbidden>]*$": searching for one <forbidden> character in
# several ids joined together is one regex call instead of one per id.
_CLASS = re.fullmatch(r"\^\[\^(.+)\]\*\$", _ID["pattern"], flags=re.DOTALL)
if _CLASS is None:
    raise SchemaError(f"id pattern {_ID['pattern']!r} is not ^[^...]*$: update codec/fastcheck.py")
_FORBIDDEN = re.compile(f"[{_CLASS.group(1)}]")


def fast_str_ids(a: str, b: str, c: str) -> bool:
    r"""True if three strings are all valid ids (the common case, checked in one go).

    >>> fast_str_ids("e1", "u1", "i1"), fast_str_ids("e1", "", "i1"), fast_str_ids("e", "u\n", "i")
    (True, False, False)
    """
    lo, hi = _ID_MIN_LEN, ID_MAX_LEN
    if not (lo <= len(a) <= hi and lo <= len(b) <= hi and lo <= len(c) <= hi):
        return False
    return _FORBIDDEN.search(a + b + c) is None


def fast_id(value: Any) -> str | None:
    """An id as the schema's `definitions.id` accepts it, normalised to str; else None.

    >>> fast_id("u1"), fast_id(42), fast_id(42.0), fast_id(""), fast_id(True)
    ('u1', '42', '42', None, None)
    """
    kind = type(value)
    if kind is str:
        ok = _ID_MIN_LEN <= len(value) <= ID_MAX_LEN and _ID_PATTERN.match(value)
        return value if ok else None
    if kind is int:
        return str(value) if _ID_MIN_INT <= value <= _ID_MAX_INT else None
    if kind is float and value.is_integer() and abs(value) < EXACT_FLOAT_INT:
        return str(int(value))  # past it the schema path refuses it (`wire.id_str`)
    return None


def fast_int(value: Any, lo: float, hi: float, *, hi_exclusive: bool = False) -> int | None:
    """A JSON-Schema `integer` (bools excluded, 3.0 allowed) within [lo, hi], as int; else None.

    >>> fast_int(3.0, 1, 10), fast_int(True, 0, 10), fast_int(10, 0, 10, hi_exclusive=True)
    (3, None, None)
    """
    kind = type(value)
    if not (kind is int or (kind is float and value.is_integer())):
        return None
    if value < lo or value > hi or (hi_exclusive and value == hi):
        return None
    return int(value)


_ROW = schema("embedding").definition
_ROW_PROPS: dict[str, Any] = _ROW["properties"]
_ROW_REQUIRED = frozenset(_ROW["required"])
_ROW_ALLOWED = frozenset(_ROW_PROPS)
_ROW_ENTITIES = frozenset(_ROW_PROPS["entity"]["enum"])
_ROW_ID = schema("embedding").subschema("id")
_ROW_TS = schema("embedding").subschema("ts")
_ROW_TS_RANGE = (_ROW_TS["minimum"], _ROW_TS["exclusiveMaximum"])
_ROW_DIM = (_ROW_PROPS["dim"]["minimum"], _ROW_PROPS["dim"]["maximum"])
_ROW_BIAS = (_ROW_PROPS["bias"]["minimum"], _ROW_PROPS["bias"]["maximum"])
_ROW_VERSION_LEN = (_ROW_PROPS["model_version"]["minLength"],
                    _ROW_PROPS["model_version"]["maxLength"])
_ROW_UPDATES = (_ROW_PROPS["updates"]["minimum"], _ROW_PROPS["updates"]["maximum"])
ROW_RECENT_ITEMS_MAX: int = _ROW_PROPS["recent_items"]["maxItems"]
if (_ROW_ID["pattern"], _ROW_ID["minLength"], _ROW_ID["maxLength"]) != \
        (_ID["pattern"], _ID_MIN_LEN, ID_MAX_LEN) or _ROW_ID["type"] != "string":
    raise SchemaError("embedding ids differ from event ids: update codec/fastcheck.py")


def fast_row_vector(obj: Any) -> bytes | None:
    """The decoded `vector` of `obj` if it is an embedding row that embedding.v1.json
    accepts, else None.

    None means "ask the schema" (which gives the precise reason), not that the
    row is bad. Every published row is decoded by the scorer and on restore,
    where the compiled schema was about a third of the decode. The vector's
    bytes come back because the check decodes them anyway.

    >>> row = {"entity": "item", "id": "i1", "dim": 1, "vector": "AACAPw==", "bias": 0.5,
    ...        "model_version": "v1", "updates": 3, "updated_at": 1, "last_event_ts": 1}
    >>> fast_row_vector(row)
    b'\\x00\\x00\\x80?'
    >>> fast_row_vector({**row, "dim": True}), fast_row_vector({**row, "x": 1})
    (None, None)
    """
    if type(obj) is not dict:
        return None
    keys = obj.keys()
    if not (_ROW_REQUIRED <= keys and keys <= _ROW_ALLOWED):
        return None
    entity, ident, vector, version = obj["entity"], obj["id"], obj["vector"], obj["model_version"]
    if type(entity) is not str or type(ident) is not str or type(vector) is not str \
            or type(version) is not str:
        return None
    if entity not in _ROW_ENTITIES or not _ID_MIN_LEN <= len(ident) <= ID_MAX_LEN \
            or not _ROW_VERSION_LEN[0] <= len(version) <= _ROW_VERSION_LEN[1]:
        return None
    # The schema's base64 pattern without a regex: whole quanta, padding only at the
    # end, then a strict decode (strict mode alone accepts "AAAA====").
    if len(vector) % 4 or "=" in vector[:-2]:
        return None
    try:
        raw = binascii.a2b_base64(vector, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    return raw if _row_fields_ok(obj, ident) else None


def _row_fields_ok(obj: dict[str, Any], ident: str) -> bool:
    """The rest of `fast_row_vector`'s check: numbers, timestamps, state, recent items."""
    bias = obj["bias"]
    if not (type(bias) is float or type(bias) is int) or not _ROW_BIAS[0] <= bias <= _ROW_BIAS[1]:
        return False
    lo, hi = _ROW_TS_RANGE
    for ts in (obj["updated_at"], obj["last_event_ts"]):
        if not (type(ts) is int and lo <= ts < hi) \
                and fast_int(ts, lo, hi, hi_exclusive=True) is None:
            return False
    if fast_int(obj["dim"], *_ROW_DIM) is None \
            or fast_int(obj["updates"], *_ROW_UPDATES) is None:
        return False
    if "state" in obj and type(obj["state"]) is not dict:
        return False
    recent = obj.get("recent_items", [])
    if type(recent) is not list or len(recent) > ROW_RECENT_ITEMS_MAX:
        return False
    if not all(type(i) is str and _ID_MIN_LEN <= len(i) <= ID_MAX_LEN for i in recent):
        return False
    return _FORBIDDEN.search(ident + "".join(recent)) is None
