"""Steps every decoder shares: size bound, key, JSON parse, id normalisation.

Order of checks (so a record gets one reason, the same one every time):
missing value -> too large (before parsing) -> key missing / not UTF-8 ->
value not UTF-8 / not JSON / non-finite -> a repeated key (inputs) -> not an object ->
schema -> key mismatch.
"""

from __future__ import annotations

import binascii
import json
import re
import reprlib
import sys
import unicodedata
from typing import Any

import orjson

from stream_app.codec.exceptions import DecodeError, DlqReason
from stream_app.events import Headers

KIB = 1024
EVENT_MAX_BYTES = 64 * KIB
"""Clicks and purchases are small; anything bigger is refused before parsing."""
MESSAGE_MAX_BYTES = 1024 * KIB
"""Score requests (up to 10000 candidates), predictions and embedding rows."""

HEADERS_COPIED_MAX = 16 * 1024
"""Bytes of a request's headers (names, values and HEADER_FRAMING each) copied onto its
answer (and from a dead-lettered record onto its DLQ record), in order; the rest are left
off. Answers are bounded by ANSWER_MAX_BYTES for
their value: uncapped, a request with large headers made an answer the producer refuses,
which stopped the scorer on that request after every restart (code review)."""


HEADER_FRAMING = 10
"""Most bytes a record header takes beyond its name and value (two varint lengths).
Counted per header, so a request of 300,000 empty headers (600 KB of framing, nothing
counted before) no longer makes an answer over the broker's limit (codec review)."""


def copied_headers(headers: Headers) -> Headers:
    """The leading headers that fit in HEADERS_COPIED_MAX; a null value stays null.

    >>> copied_headers((("a", b"x" * 10), ("n", None), ("b", b"y" * HEADERS_COPIED_MAX)))
    (('a', b'xxxxxxxxxx'), ('n', None))
    >>> len(copied_headers((("", b""),) * 100_000)) == HEADERS_COPIED_MAX // HEADER_FRAMING
    True
    """
    out, size = [], 0
    for name, value in headers:
        size += len(name.encode()) + (0 if value is None else len(value)) + HEADER_FRAMING
        if size > HEADERS_COPIED_MAX:
            break
        out.append((name, value))
    return tuple(out)


_NON_FINITE = ("NaN", "Infinity")
_SHOWN = reprlib.Repr()  # Python 3.11's takes no arguments
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 80, 80


def shown(value: object) -> str:
    """A parsed JSON value for an error message, bounded in depth and length: repr() of
    1,000 nested arrays (orjson reads 1,024) raised RecursionError, which escaped the
    trainer's decode and stopped it on the same record at every restart.

    >>> shown([[[[["deep"]]]]]), shown("x" * 1000)[:12]
    ('[[[[...]]]]', "'xxxxxxxxxxx")
    """
    return _SHOWN.repr(value)


def check_value(value: bytes | None, limit: int) -> bytes:
    """Refuse a null / empty value and a value over `limit` bytes, without parsing it."""
    if not value:
        raise DecodeError(DlqReason.MISSING_VALUE, "value is null or empty")
    if len(value) > limit:
        raise DecodeError(DlqReason.TOO_LARGE, f"value is {len(value)} bytes, limit {limit}")
    return value


def decode_key(key: bytes | None) -> str:
    """The Kafka key as text; absent, empty or non-UTF-8 keys are refused."""
    if not key:
        raise DecodeError(DlqReason.MISSING_KEY, "record has no key")
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(DlqReason.BAD_UTF8, f"key: {exc}") from exc


def parse_object(value: bytes) -> Any:
    """`orjson.loads`, with its failures mapped to bad_utf8 / non_finite / not_json.

    Returns whatever JSON it was; the schema (or the fast path) checks it is an object.
    """
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise parse_error(value, exc) from exc


def parse_input(value: bytes) -> Any:
    """`parse_object` for what users send (events, score requests): an object that names
    a key twice is refused (`duplicate_key`) where orjson keeps the last value silently,
    so `{"user_id": "u1", ..., "user_id": "u2"}` taught u2 whatever the sender meant."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise parse_error(value, exc) from exc
    check_unique_keys(value, obj)
    return obj


_KEY_COLON = re.compile(rb'"(?:[^"\\]++|\\.)*+"[ \t\n\r]*+(:)?', re.DOTALL)
"""A JSON string token, and the colon that makes it a key. Scanned from the start of a
valid document, matches begin only at a token's opening quote (a quote inside a string
is always escaped), so the colons captured count exactly the keys as written."""


_SPACED_COLON = re.compile(rb"[ \t\n\r]:")


def check_unique_keys(value: bytes, obj: Any) -> None:
    r"""Refuse a document (valid JSON, already parsed as `obj`) whose objects repeat a key.

    Exact, and one byte count in the common case: each key as written is followed by one
    colon, and every other colon is inside a string, so colons >= written keys >= parsed
    keys, the last two equal only without a repeat: a colon count equal to the parsed
    keys proves there is none. With colons in values (a URL, a time, `sku:1`): where no
    colon follows whitespace, `":` occurs once per written key and otherwise only as
    `\":` inside a string, so its count equal to the parsed keys proves it as well.
    Otherwise (whitespace before a colon, or a repeat) one regex scan counts the keys.

    >>> check_unique_keys(b'{"a": {"b": 1}, "c": "x\\":"}', {"a": {"b": 1}, "c": 'x":'})
    >>> check_unique_keys(b'{"a": 1, "a" : 2}', {"a": 2})
    Traceback (most recent call last):
    stream_app.codec.exceptions.DecodeError: duplicate_key: an object names key 'a' twice
    """
    if type(obj) is not dict and type(obj) is not list:
        return
    colons = value.count(b":")
    if type(obj) is dict and colons == len(obj):
        return
    parsed = _parsed_keys(obj)
    if colons == parsed:
        return
    if _SPACED_COLON.search(value) is None and value.count(b'":') == parsed:
        return
    if _KEY_COLON.findall(value).count(b":") == parsed:
        return
    key = _repeated_key(value)
    named = "" if key is None else f" {shown(key)}"
    raise DecodeError(DlqReason.DUPLICATE_KEY, f"an object names key{named} twice")


def _parsed_keys(obj: Any) -> int:
    """Keys in every object of a parsed document; by a stack, as it may nest 1,024 deep."""
    count, stack = 0, [obj]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            count += len(item)
            item = item.values()
        for value in item:  # a plain loop: half the time of extend() over a generator
            if type(value) is dict or type(value) is list:
                stack.append(value)
    return count


def _repeated_key(value: bytes) -> str | None:
    """The first key an object repeats, for the message (error path only)."""
    found: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if not found and len(set(keys)) < len(keys):
            found.append(next(k for i, k in enumerate(keys) if k in keys[:i]))
        return dict(pairs)

    try:
        json.loads(value, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):
        return None
    return found[0] if found else None


def parse_error(value: bytes, exc: orjson.JSONDecodeError) -> DecodeError:
    """Classify a parse failure; runs only on the error path, so it may be slow."""
    try:
        text = value.decode("utf-8")  # exc.pos counts characters, not bytes
    except UnicodeDecodeError as utf8_exc:
        return DecodeError(DlqReason.BAD_UTF8, f"value: {utf8_exc}")
    if "surrogate" in exc.msg:  # "\ud800" escapes: valid JSON syntax, not valid Unicode
        return DecodeError(DlqReason.BAD_UTF8, f"value: {exc}")
    # Only where a value was due: a key named "NaN" after a missing comma, or an unquoted
    # NaN key, is a syntax error like any other (they were labelled non_finite).
    value_due = "expected a JSON value" in exc.msg or "no digit after sign" in exc.msg
    if "infinity" in exc.msg:  # 1e400, or an integer of 400 digits: no NaN/Infinity in it
        return DecodeError(DlqReason.NON_FINITE, f"a number too large for a double: {exc}")
    if value_due and text[exc.pos:].startswith(_NON_FINITE):
        return DecodeError(DlqReason.NON_FINITE, f"NaN/Infinity are not JSON: {exc}")
    return DecodeError(DlqReason.NOT_JSON, str(exc))


def check_key_matches(key: str, expected: str, what: str) -> None:
    """The key routes the record to a partition, so it must be the id it claims to be.

    Text that differs only in its Unicode normalisation (NFC "é" against NFD "e" and a
    combining accent) is shown escaped: printed as it is, the two looked equal.

    >>> check_key_matches("caf\u00e9", "cafe\u0301", "user_id")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    stream_app.codec.exceptions.DecodeError: key_mismatch: key 'caf\xe9' != user_id 'cafe\u0301' ...
    """
    if key != expected:
        shown = repr
        note = ""
        if unicodedata.normalize("NFC", key) == unicodedata.normalize("NFC", expected):
            shown, note = ascii, " (the same text in another Unicode normalisation form)"
        raise DecodeError(DlqReason.KEY_MISMATCH,
                          f"key {shown(key[:64])} != {what} {shown(expected[:64])}{note}")


EXACT_FLOAT_INT = 2**53
"""An integer id parsed as a float (written 3.0 or 3e5, or past int64, which orjson
reads as a float) is exact only below this: past it, distinct ids would share one."""


def id_str(value: Any) -> str:
    """An id the schema accepted, as a string: integers (also 3.0) become decimal text.

    Raises `DecodeError` for a float past `EXACT_FLOAT_INT`, which JSON Schema
    still calls an integer: -9223372036854775809 reads as -2**63, in range.
    """
    if isinstance(value, str):
        return str.__str__(value)  # a subclass (numpy.str_, an enum) as plain text
    if type(value) is float and abs(value) >= EXACT_FLOAT_INT:
        raise DecodeError(DlqReason.ID_TOO_LONG,
                          f"id {value!r} is not an exact integer (past int64, or a float past "
                          "2**53): send it as a string")
    return str(int(value))


def ids_tuple(values: Any) -> tuple[str, ...]:
    """A list of schema-valid ids as a tuple of strings."""
    return tuple(id_str(v) for v in values)


def _as_is(text: str) -> str:
    return text


intern_id = sys.intern if sys.version_info[:2] != (3, 12) else _as_is
"""Share one string per item id across user rows' `recent_items` (without it, 20 ids a
user took 1.2 KB, seven times the user's vector). Not on Python 3.12, where interned
strings are never freed: a scorer would keep every item id it ever read (1M ids dropped
kept 121 MiB there, 1 MiB on 3.11 and 3.13). On 3.12 each row holds its own copies."""


def b64encode(raw: bytes) -> str:
    """Standard base64 with padding, as text."""
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def b64decode(text: str, reason: DlqReason, what: str) -> bytes:
    """Strict base64 (no stray characters, nothing after padding); failures become `reason`.

    binascii's strict mode checks in C what `base64.b64decode(validate=True)`
    checks with a regular expression: 1.0 vs 1.6 µs for a 64-float vector,
    twice per restored user row.
    """
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(reason, f"{what}: bad base64: {exc}") from exc
