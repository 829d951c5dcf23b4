"""Hand-written equivalents of the schema's id / integer rules, for the hot path.

Every bound and the id pattern are read from the schema files, so the schema
stays the single source of truth; tests check both agree on a corpus and under
hypothesis. Each check returns the normalised value, or None where the schema
would refuse (the caller then runs the schema to learn the precise reason).
"""

from __future__ import annotations

import re
from typing import Any

from stream_app.codec.exceptions import SchemaError
from stream_app.codec.schemas import schema

_ID = schema("click").subschema("id")
# fastjsonschema turns a final `$` into `\Z` (Python's `$` also matches before a
# trailing newline); do the same so both checks refuse "id\n".
_ID_PATTERN = re.compile(re.sub(r"\$$", r"\\Z", _ID["pattern"]))
_ID_MIN_LEN: int = _ID["minLength"]
_ID_MAX_LEN: int = _ID["maxLength"]
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
    lo, hi = _ID_MIN_LEN, _ID_MAX_LEN
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
        ok = _ID_MIN_LEN <= len(value) <= _ID_MAX_LEN and _ID_PATTERN.match(value)
        return value if ok else None
    if kind is int or (kind is float and value.is_integer()):
        return str(int(value)) if _ID_MIN_INT <= value <= _ID_MAX_INT else None
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
