"""Every line of tests/data/bad_inputs.jsonl must be refused with its expected reason.

Line format: {"name", "topic", "key", "value", "reason"}. `topic` picks the
decoder (click, purchase, score_request, embedding, prediction, dlq, meta).
`key` / `value` are text (UTF-8), null, {"b64": ...} for raw bytes,
{"text": t, "repeat": n} for t*n, or {"text": t, "pad_to": n} for t followed
by spaces up to n bytes (JSON allows trailing whitespace).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.codec import (
    DecodeError,
    DlqReason,
    decode_dlq,
    decode_embedding,
    decode_event,
    decode_meta,
    decode_prediction,
    decode_score_request,
    make_dlq_record,
)
from stream_app.codec.wire import check_unique_keys
from stream_app.events import EventKind

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_inputs.jsonl"
Decoder = Callable[[bytes | None, bytes | None], object]
DECODERS: dict[str, Decoder] = {
    "click": lambda v, k: decode_event(v, k, EventKind.CLICK),
    "purchase": lambda v, k: decode_event(v, k, EventKind.PURCHASE),
    "score_request": decode_score_request,
    "embedding": lambda v, k: decode_embedding(k, v),
    "prediction": lambda v, k: decode_prediction(v),
    "dlq": lambda v, k: decode_dlq(v),
    "meta": lambda v, k: decode_meta(v),
}


def raw(spec: Any) -> bytes | None:
    """Bytes described by a corpus field (see the module docstring)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return spec.encode("utf-8")
    if "b64" in spec:
        return base64.b64decode(str(spec["b64"]))
    text: bytes = spec["text"].encode("utf-8")
    if "repeat" in spec:
        return text * int(spec["repeat"])
    return text + b" " * (int(spec["pad_to"]) - len(text))


def load_corpus() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in CORPUS.read_bytes().splitlines() if line.strip()]


CASES = load_corpus()


def test_corpus_is_broad() -> None:
    reasons = {case["reason"] for case in CASES}
    assert len(CASES) >= 30
    assert len({case["name"] for case in CASES}) == len(CASES), "names must be unique"
    assert reasons <= {r.value for r in DlqReason}
    assert len(reasons) >= 20


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_bad_input_is_refused_with_its_reason(case: dict[str, Any]) -> None:
    decoder = DECODERS[case["topic"]]
    with pytest.raises(DecodeError) as caught:
        decoder(raw(case["value"]), raw(case["key"]))
    assert caught.value.reason == case["reason"], caught.value.detail
    assert caught.value.detail


@pytest.mark.parametrize(("value", "reason"), [
    (b'{"event_id":"e","ts":NaN}', "non_finite"),
    (b'{"event_id":"e","ts":-Infinity}', "non_finite"),
    (b'{"event_id":"e","ts":[1,Infinity]}', "non_finite"),
    (b'{"event_id":"e","ts":1e999}', "non_finite"),
    # After a non-ASCII character: the parser counts characters, not bytes.
    ('{"event_id":"\u00e9\u4e2d","ts":NaN}'.encode(), "non_finite"),
    ('{"event_id":"\u00e9","ts":-Infinity}'.encode(), "non_finite"),
    # Syntax errors near the text NaN were labelled non_finite (codec review).
    (b'{"event_id":"e","user_id":"u" "NaN":1}', "not_json"),
    (b'{"event_id":"e",NaN:1}', "not_json"),
])
def test_nan_and_infinity_are_told_from_syntax_errors_near_them(value: bytes,
                                                              reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(value, b"u", EventKind.CLICK)
    assert caught.value.reason.value == reason


@pytest.mark.parametrize("number", [b"1" * 400, b"1e400", b"-1e999"])
def test_a_number_too_large_for_a_double_is_not_called_nan_or_infinity(number: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(b'{"event_id":' + number + b',"ts":1}', b"u", EventKind.CLICK)
    assert caught.value.reason.value == "non_finite"
    assert caught.value.detail.startswith("a number too large for a double")


def test_a_detail_cut_to_its_bound_says_how_much_was_left_out() -> None:
    """It ended mid-name (`'field_0070', 'field`) and read as the whole list."""
    fields = ",".join(f'"field_{n:04d}":1' for n in range(200))
    value = b'{"event_id":"e","user_id":"u","item_id":"i","ts":1700000000000,' + \
        fields.encode() + b"}"
    with pytest.raises(DecodeError) as caught:
        decode_event(value, b"u", EventKind.CLICK)
    assert caught.value.reason.value == "unknown_field"
    assert caught.value.detail.endswith(" more characters)")
    record = make_dlq_record(source_topic="t", partition=0, offset=0, reason=DlqReason.SCHEMA,
                             detail="x" * 5000, key=None, value=b"v", ts=0, stage="decode")
    assert record.detail.endswith("... (4,003 more characters)") and len(record.detail) == 1024


# Documents written pair by pair, so a key may repeat, with any JSON whitespace around
# the colons and strings holding quotes, colons and backslashes: check_unique_keys must
# refuse exactly those that stdlib json, keeping every pair, finds a repeat in.
_keys = st.text(alphabet=st.sampled_from(['a', 'b', '"', ":", "\\", " ", "é"]), max_size=3)
_ws = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])
_docs = st.recursive(
    st.one_of(st.integers(-5, 5), _keys.map(lambda s: s), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: ("list", items)),
        st.lists(st.tuples(_keys, _ws, inner), max_size=4).map(lambda pairs: ("obj", pairs))),
    max_leaves=12)


def _written(doc: Any) -> str:
    if isinstance(doc, tuple) and doc[0] == "list":
        return "[" + ",".join(_written(d) for d in doc[1]) + "]"
    if isinstance(doc, tuple):
        return "{" + ",".join(f"{json.dumps(k)}{ws}:{ws}{_written(v)}"
                              for k, ws, v in doc[1]) + "}"
    return json.dumps(doc)


def _repeats(text: str) -> bool:
    found = []

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        found.append(len(set(keys)) < len(keys))
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return any(found)


@settings(max_examples=400, deadline=None)
@given(doc=st.tuples(_keys, _ws, _docs).map(lambda top: ("obj", [top, top]))
       | _docs.filter(lambda d: isinstance(d, tuple)))
def test_a_repeated_key_is_refused_exactly_when_an_object_has_one(doc: Any) -> None:
    value = _written(doc).encode()
    parsed = orjson.loads(value)
    if _repeats(value.decode()):
        with pytest.raises(DecodeError) as caught:
            check_unique_keys(value, parsed)
        assert caught.value.reason is DlqReason.DUPLICATE_KEY
    else:
        check_unique_keys(value, parsed)


def test_keys_and_strings_that_look_like_repeats_are_accepted() -> None:
    """Quotes, colons and escapes inside strings, and nested objects, fool a byte count."""
    for value in (b'{"event_id":"e\\":","user_id":"u1","item_id":"i1","ts":1}',
                  b'{"a":"\\":\\":","b":{"a":1,"b":[{"a":2}]}}',
                  b'{"a" :1,"b":"\\":"}', b'{"":1,"\\"":2}', b'[{"a":1},{"a":1}]'):
        check_unique_keys(value, orjson.loads(value))


def test_a_request_naming_a_key_twice_keeps_its_id_for_the_error_answer() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_score_request(b'{"request_id":"r1","user_id":"u1","k":5,"k":500}', b"u1")
    assert caught.value.reason is DlqReason.DUPLICATE_KEY and caught.value.request_id == "r1"
