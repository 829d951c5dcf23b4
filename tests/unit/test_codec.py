"""Round trips and edge cases of the codec; bad inputs live in test_codec_bad_inputs.py."""

from __future__ import annotations

import dataclasses
import sys
from collections import OrderedDict
from enum import Enum, StrEnum
from typing import Any

import numpy as np
import orjson
import pytest

from stream_app.codec import (
    DLQ_BYTES_MAX,
    DLQ_RECORD_MAX,
    EVENT_MAX_BYTES,
    META_KEY,
    DecodeError,
    DlqReason,
    EncodeError,
    decode_dlq,
    decode_embedding,
    decode_event,
    decode_meta,
    decode_prediction,
    decode_score_request,
    dlq_key,
    dlq_record,
    encode_dlq,
    encode_embedding,
    encode_event,
    encode_meta,
    encode_prediction,
    encode_score_request,
    is_meta_key,
    load_schemas,
)
from stream_app.events import (
    Coordinates,
    EmbeddingRow,
    Event,
    EventKind,
    PredictedItem,
    Prediction,
    ScoreRequest,
)

SCHEMAS = load_schemas()


def _ids_as_text(obj: dict[str, Any], *fields: str) -> dict[str, Any]:
    out = dict(obj)
    for field in fields:
        if field in out:
            value = out[field]
            out[field] = [str(v) for v in value] if isinstance(value, list) else str(value)
    return out


# --- every schema example round-trips (the README shows these examples) ---


@pytest.mark.parametrize("kind", list(EventKind))
def test_event_examples_round_trip(kind: EventKind) -> None:
    for example in SCHEMAS[kind.value].examples:
        key = str(example["user_id"]).encode()
        event = decode_event(orjson.dumps(example), key, kind)
        assert decode_event(encode_event(event), key, kind) == event
        normalised = _ids_as_text(example, "event_id", "user_id", "item_id")
        assert orjson.loads(encode_event(event)) == normalised


def test_score_request_examples_round_trip() -> None:
    for example in SCHEMAS["score-request"].examples:
        key = str(example["user_id"]).encode()
        request = decode_score_request(orjson.dumps(example), key)
        assert decode_score_request(encode_score_request(request), key) == request
        expected = {"exclude_seen": True, "explain": False}
        expected.update(_ids_as_text(example, "request_id", "user_id", "candidates", "exclude"))
        assert orjson.loads(encode_score_request(request)) == expected


def test_prediction_examples_round_trip() -> None:
    for example in SCHEMAS["prediction"].examples:
        prediction = decode_prediction(orjson.dumps(example))
        assert decode_prediction(encode_prediction(prediction)) == prediction
        assert orjson.loads(encode_prediction(prediction)) == {"ready": True, **example}


def test_embedding_examples_round_trip() -> None:
    for example in SCHEMAS["embedding"].examples:
        key = f"{example['entity']}:{example['id']}".encode()
        row = decode_embedding(key, orjson.dumps(example))
        assert row is not None and row.key.encode() == key
        assert orjson.loads(encode_embedding(row)) == example


def test_meta_and_dlq_examples_round_trip() -> None:
    for example in SCHEMAS["trainer-meta"].examples:
        assert orjson.loads(encode_meta(decode_meta(orjson.dumps(example)))) == example
    for example in SCHEMAS["dlq-record"].examples:
        assert orjson.loads(encode_dlq(decode_dlq(orjson.dumps(example)))) == example


# --- events ---


def test_integer_ids_are_normalised_and_key_compared_as_text() -> None:
    value = b'{"event_id":1,"user_id":42,"item_id":7.0,"ts":1700000000000}'
    event = decode_event(value, b"42", EventKind.CLICK)
    assert (event.event_id, event.user_id, event.item_id) == ("1", "42", "7")


def test_purchase_fields_and_context_survive() -> None:
    event = Event(
        event_id="p1", user_id="ü-ser", item_id="i 1", ts=1700000000000, kind=EventKind.PURCHASE,
        quantity=3, price=0.0, item_released_at=946_684_800_000,
        context={"nested": {"a": [1, None]}},
    )  # fmt: skip
    back = decode_event(encode_event(event), "ü-ser".encode(), EventKind.PURCHASE)
    assert back == event and back.context == event.context
    assert isinstance(back.price, float)


def test_a_context_that_refers_to_itself_or_shares_lists_into_a_huge_tree_is_refused(
        ) -> None:
    """The encoder's walks over the context never ended on either (producer API only:
    nothing decoded from Kafka can hold a cycle)."""
    loop: dict[str, object] = {}
    loop["self"] = loop
    shared: list[object] = []
    for _ in range(60):  # 2**60 leaves once written out
        shared = [shared, shared]
    for context in (loop, {"a": shared}):
        event = Event(event_id="e", user_id="u", item_id="i", ts=1_700_000_000_001,
                      kind=EventKind.CLICK, context=context)  # type: ignore[arg-type]
        with pytest.raises(EncodeError, match="more elements") as caught:
            encode_event(event)
        assert caught.value.reason is DlqReason.TOO_LARGE


def test_a_context_nested_past_the_bound_is_refused_on_both_paths() -> None:
    """orjson reads 1,024 levels and writes 255: a context of 300 levels was valid on the
    topic, and `replay` crashed re-encoding it from a file."""
    def value(levels: int) -> bytes:
        inner = b'{"x":' * (levels - 1) + b"{}" + b"}" * (levels - 1)
        return (b'{"event_id":"e","user_id":"u","item_id":"i","ts":1700000000001,"context":'
                + inner + b"}")

    assert decode_event(value(32), b"u", EventKind.CLICK).context is not None
    for levels in (33, 300, 1000):
        with pytest.raises(DecodeError, match="nested over 32 levels") as caught:
            decode_event(value(levels), b"u", EventKind.CLICK)
        assert caught.value.reason is DlqReason.SCHEMA
    deep_list = b'{"event_id":"e","user_id":"u","item_id":"i","ts":1700000000001,"context":' + \
        b'{"a":' + \
        b"[" * 40 + b"]" * 40 + b"}}"
    with pytest.raises(DecodeError, match="nested over 32 levels"):
        decode_event(deep_list, b"u", EventKind.CLICK)


def test_size_bound_is_inclusive_and_checked_before_parsing() -> None:
    body = b'{"event_id":"e","user_id":"u","item_id":"i","ts":1700000000001}'
    at_bound = body + b" " * (EVENT_MAX_BYTES - len(body))
    assert decode_event(at_bound, b"u", EventKind.CLICK).user_id == "u"
    with pytest.raises(DecodeError) as caught:
        decode_event(b"\xff" * (EVENT_MAX_BYTES + 1), None, EventKind.CLICK)
    assert caught.value.reason is DlqReason.TOO_LARGE


def test_library_errors_are_chained() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_event(b"{nope", b"u", EventKind.CLICK)
    assert caught.value.__cause__ is not None
    with pytest.raises(DecodeError) as caught:
        decode_event(b'{"event_id":""}', b"u", EventKind.CLICK)
    assert type(caught.value.__cause__).__name__ == "JsonSchemaValueException"


def test_encode_refuses_what_the_schema_would_refuse() -> None:
    click = Event(event_id="e", user_id="u", item_id="i", ts=1700000000001, kind=EventKind.CLICK,
                  price=1.0)
    with pytest.raises(EncodeError):
        encode_event(click)
    purchase = Event(
        event_id="e", user_id="u", item_id="i", ts=1700000000001, kind=EventKind.PURCHASE,
        price=float("nan")
    )
    with pytest.raises(EncodeError):
        encode_event(purchase)
    # orjson wrote NaN as null: the context changed without a word (codec review).
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    for context, said in (({"x": float("nan")}, "context must hold finite numbers"),
                          ({"a": [1, {"b": float("inf")}]}, "context must hold finite numbers"),
                          ({"d": deep}, "context is nested over 32 levels")):
        with pytest.raises(EncodeError, match=said):
            encode_event(Event(event_id="e", user_id="u", item_id="i", ts=1700000000001,
                               kind=EventKind.CLICK, context=context))


_GOOD = Event(event_id="e", user_id="u", item_id="i", ts=1700000000001, kind=EventKind.PURCHASE)


def _deep(levels: int, container: type) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = container([value])
    return value


@pytest.mark.parametrize(("changes", "reason"), [
    ({"ts": 1700000000}, DlqReason.BAD_TIMESTAMP),  # seconds, not milliseconds
    ({"price": 1e13}, DlqReason.OUT_OF_RANGE),
    ({"quantity": 0}, DlqReason.OUT_OF_RANGE),
    ({"item_id": "i" * 257}, DlqReason.ID_TOO_LONG),
    ({"user_id": ""}, DlqReason.EMPTY_ID),
    ({"event_id": "e\n"}, DlqReason.BAD_ID_CHARS),
    ({"context": {"note": "x" * EVENT_MAX_BYTES}}, DlqReason.TOO_LARGE),
    ({"price": "5"}, DlqReason.WRONG_TYPE),  # raised TypeError (codec review)
    ({"price": 10**400}, DlqReason.OUT_OF_RANGE),  # raised OverflowError
    ({"kind": EventKind.CLICK, "quantity": 1}, DlqReason.WRONG_TOPIC),
    ({"context": [1]}, DlqReason.WRONG_TYPE),
    ({"context": {"tags": {1, 2}}}, DlqReason.WRONG_TYPE),  # a set: no JSON for it
    ({"user_id": "u\udcff"}, DlqReason.BAD_UTF8),
    # orjson writes tuples and dict subclasses as JSON, so the checks look inside them
    # (a diff review: a tuple 40 deep was encoded, NaN in one became null)
    ({"context": {"t": _deep(40, tuple)}}, DlqReason.SCHEMA),
    ({"context": {"t": (1.0, float("nan"))}}, DlqReason.NON_FINITE),
    ({"context": OrderedDict(a=float("inf"))}, DlqReason.NON_FINITE),
    ({"context": OrderedDict(a=_deep(40, list))}, DlqReason.SCHEMA),
])
def test_encode_refuses_an_event_every_reader_would_dead_letter(
        changes: dict[str, Any], reason: DlqReason) -> None:
    """A producer built such an event, sent it, and heard of it only from the DLQ."""
    with pytest.raises(EncodeError) as caught:
        encode_event(dataclasses.replace(_GOOD, **changes))
    assert caught.value.reason is reason
    assert decode_event(encode_event(_GOOD), b"u", EventKind.PURCHASE) == _GOOD


def test_ids_of_a_str_subclass_are_sent_as_plain_text() -> None:
    """numpy.str_ (pandas columns) and StrEnum ids encoded before the encoder checked its
    output; the check then raised ValueError from int() (codec review)."""
    class Who(StrEnum):
        ALICE = "alice"

    class Sku(str, Enum):  # noqa: UP042 (str() of such a member is "Sku.ONE")
        ONE = "sku-1"

    event = dataclasses.replace(_GOOD, user_id=Who.ALICE, item_id=Sku.ONE)
    back = decode_event(encode_event(event), b"alice", EventKind.PURCHASE)
    assert (back.user_id, back.item_id) == ("alice", "sku-1")
    event = dataclasses.replace(_GOOD, user_id=Who.ALICE, item_id=np.str_("sku-1"))
    assert orjson.loads(encode_event(event))["user_id"] == "alice"
    back = decode_event(encode_event(event), b"alice", EventKind.PURCHASE)
    assert (back.user_id, back.item_id) == ("alice", "sku-1")
    assert type(back.user_id) is str and type(back.item_id) is str


@pytest.mark.parametrize(("changes", "reason"), [
    ({"k": 0}, DlqReason.BAD_K),
    ({"k": 1001}, DlqReason.BAD_K),
    ({"candidates": ("a", "")}, DlqReason.EMPTY_ID),
    ({"exclude": tuple(f"i{n}" for n in range(10_001))}, DlqReason.TOO_MANY_EXCLUSIONS),
    ({"user_id": "u\udcff"}, DlqReason.BAD_UTF8),
    ({"candidates": (2.0**60,)}, DlqReason.ID_TOO_LONG),  # a float id past 2**53
])
def test_encode_refuses_a_request_the_scorer_would_refuse(
        changes: dict[str, Any], reason: DlqReason) -> None:
    good = ScoreRequest(request_id="r", user_id="u", k=5, candidates=("a", "b"))
    with pytest.raises(EncodeError) as caught:
        encode_score_request(dataclasses.replace(good, **changes))
    assert caught.value.reason is reason
    assert str(caught.value).startswith(f"{reason}: ")
    assert decode_score_request(encode_score_request(good), b"u") == good


def test_detail_is_bounded() -> None:
    many = {f"field_{i}_{'x' * 50}": 1 for i in range(100)}
    value = orjson.dumps({"event_id": "e", "user_id": "u", "item_id": "i", "ts": 1700000000001,
                          **many})
    with pytest.raises(DecodeError) as caught:
        decode_event(value, b"u", EventKind.CLICK)
    assert caught.value.reason is DlqReason.UNKNOWN_FIELD
    assert len(caught.value.detail) <= 1024


# --- score requests and predictions ---


def test_bad_request_with_usable_request_id_carries_it() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_score_request(b'{"request_id":7,"user_id":"u","k":0}', b"u")
    assert caught.value.reason is DlqReason.BAD_K and caught.value.request_id == "7"
    with pytest.raises(DecodeError) as caught:
        decode_score_request(b'{"request_id":"","user_id":"u","k":1}', b"u")
    assert caught.value.request_id is None
    with pytest.raises(DecodeError) as caught:
        decode_score_request(b'{"request_id":"r","user_id":"u","k":1}', None)
    assert caught.value.reason is DlqReason.MISSING_KEY and caught.value.request_id == "r"


def test_request_defaults_and_candidates() -> None:
    request = decode_score_request(b'{"request_id":"r","user_id":"u","k":5}', b"u")
    assert request == ScoreRequest(request_id="r", user_id="u", k=5)
    assert request.candidates is None
    empty = decode_score_request(b'{"request_id":"r","user_id":"u","k":5,"candidates":[]}', b"u")
    assert empty.candidates == ()


def test_prediction_refuses_non_finite_scores() -> None:
    bad = Prediction(
        request_id="r", user_id="u", items=(PredictedItem(item_id="i", score=float("inf")),),
        model_version="m", fallback=False, latency_ms=1.0,
    )  # fmt: skip
    with pytest.raises(EncodeError):
        encode_prediction(bad)


# --- embeddings ---


def _row(**changes: Any) -> EmbeddingRow:
    rng = np.random.default_rng(0)
    fields: dict[str, Any] = {
        "entity": "user", "id": "u:1", "vector": rng.standard_normal(16).astype(np.float32),
        "bias": 0.0, "model_version": "m1", "updates": 2, "updated_at": 5, "last_event_ts": 4,
        "recent_items": ("i1", "i2"),
    }  # fmt: skip
    fields.update(changes)
    return EmbeddingRow(**fields)


def test_embedding_state_round_trip_is_bit_exact() -> None:
    rng = np.random.default_rng(1)
    weird = np.array([np.nan, -0.0, np.inf, 1e-45, -3.4e38], dtype=np.float32)
    weird_bits = weird.view(np.uint32).copy()
    weird_bits[0] = 0x7FC01234  # a NaN with a payload
    state: dict[str, Any] = {
        "id_vector": rng.standard_normal(16).astype(np.float32),
        "adagrad": rng.random((2, 3, 4)).astype(np.float32),
        "weird": weird_bits.view(np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "fortran": np.asfortranarray(rng.random((3, 5)).astype(np.float32)),
        "counters": {"events": 7, "decayed": 0.25, "nested": [np.ones(2, np.float32), "x"]},
    }
    row = _row(state=state)
    back = decode_embedding(row.key.encode(), encode_embedding(row))
    assert back is not None and back == row
    assert back.vector.dtype == np.float32 and np.array_equal(back.vector, row.vector)
    for name in ("id_vector", "adagrad", "weird", "empty", "fortran"):
        got, want = back.state[name], state[name]
        assert got.dtype == np.float32 and got.shape == want.shape
        assert got.tobytes() == np.ascontiguousarray(want).tobytes()
        assert got.flags.writeable
        assert got.base is None  # owns its bytes: no view object kept beside it (memory)
    assert back.state["counters"]["events"] == 7
    assert np.array_equal(back.state["counters"]["nested"][0], np.ones(2, np.float32))


def test_state_can_be_skipped() -> None:
    row = _row(state={"acc": np.ones(3, dtype=np.float32)})
    back = decode_embedding(row.key.encode(), encode_embedding(row), with_state=False)
    assert back is not None and back.state == {} and back.recent_items == ("i1", "i2")


@pytest.mark.skipif(sys.version_info[:2] == (3, 12),
                    reason="off on 3.12, which never frees interned strings (intern_id)")
def test_users_share_one_string_per_recent_item() -> None:
    """Tables hold every user's recent items: one copy per item, not one per mention."""
    a, b = (decode_embedding(r.key.encode(), encode_embedding(r))
            for r in (_row(), dataclasses.replace(_row(), id="u2")))
    assert a is not None and b is not None and a.id != b.id
    assert all(x is y for x, y in zip(a.recent_items, b.recent_items, strict=True))


def test_tombstone_decodes_to_none_but_the_key_is_still_checked() -> None:
    assert decode_embedding(b"item:i1", None) is None
    with pytest.raises(DecodeError) as caught:
        decode_embedding(b"bogus", None)
    assert caught.value.reason is DlqReason.BAD_KEY


@pytest.mark.parametrize(
    "row",
    [
        _row(vector=np.ones(4, dtype=np.float64)),
        _row(vector=np.ones((2, 2), dtype=np.float32)),
        _row(vector=np.array([1.0, np.nan], dtype=np.float32)),
        _row(bias=float("nan")),
        _row(state={"acc": np.ones(3, dtype=np.float64)}),
        _row(state={"x": float("inf")}),
        _row(state={"fake": {"b64f32": "", "shape": [0]}}),
    ],
)
def test_encode_embedding_refuses_unrestorable_rows(row: EmbeddingRow) -> None:
    with pytest.raises(EncodeError):
        encode_embedding(row)


def test_meta_record_round_trip() -> None:
    meta: dict[str, Any] = {
        "model_version": "m1",
        "updated_at": 9,
        "steps": 3,
        "pop": np.arange(3, dtype=np.float32),
    }
    back = decode_meta(encode_meta(meta))
    assert back["steps"] == 3 and np.array_equal(back["pop"], meta["pop"])
    assert is_meta_key(META_KEY) and not is_meta_key(b"user:meta")
    with pytest.raises(EncodeError):
        encode_meta({"steps": 1})


# --- DLQ ---


def test_dlq_record_truncates_and_round_trips() -> None:
    big = b"x" * (DLQ_BYTES_MAX + 10)
    error = DecodeError(DlqReason.TOO_LARGE, "value is big")
    record = dlq_record(Coordinates(topic="clicks", partition=2, offset=9), b"k", big, error, ts=5)
    assert record.value_truncated and record.value_size == len(big)
    assert record.value is not None and len(record.value) == DLQ_BYTES_MAX
    back = decode_dlq(encode_dlq(record))
    assert back == record and back.reason == "too_large" and back.stage == "decode"


def test_the_largest_dlq_record_fits_the_room_the_processes_ask_of_the_topic() -> None:
    """What `require_room` asks of events-dlq must hold the worst record: a huge key and
    value, a detail of escaped characters, the longest topic name, the most headers."""
    topic = "\x01" * 249
    headers = tuple((f"h{n}", b"v" * 1000) for n in range(40))
    error = DecodeError(DlqReason.SCHEMA, "\x02" * 5000)
    record = dlq_record(Coordinates(topic=topic, partition=2**31 - 1, offset=2**63 - 1),
                        b"k" * 2_000_000, b"v" * 3_000_000, error, ts=2**40, headers=headers)
    value = encode_dlq(record)
    framed = sum(len(k) + len(v or b"") + 10 for k, v in record.headers)
    assert len(value) + len(dlq_key(record)) + framed + 100 <= DLQ_RECORD_MAX
    assert len(value) > 175_000 and framed > 15_000  # near the bound, not far under it


def test_dlq_of_a_keyless_tombstone() -> None:
    error = DecodeError(DlqReason.MISSING_VALUE, "null")
    record = dlq_record(Coordinates(topic="clicks", partition=0, offset=0), None, None, error, ts=1)
    back = decode_dlq(encode_dlq(record))
    assert back.key is None and back.value is None and back.value_size == 0


def test_a_bad_id_character_is_named_in_words_not_by_the_schemas_regex() -> None:
    """The DLQ detail quoted the id pattern, a regex of invisible characters (walkthrough)."""
    import orjson

    from stream_app.codec import DecodeError, decode_event
    from stream_app.events import EventKind

    value = orjson.dumps({"event_id": "e1", "user_id": "u", "item_id": "i\u0001x",
                          "ts": 1_700_000_000_000})
    with pytest.raises(DecodeError) as err:
        decode_event(value, b"u", EventKind.CLICK)
    assert err.value.reason == "bad_id_chars"
    assert err.value.detail == ("data.item_id 'i\\x01x': an id may not hold control characters "
                                "or line / paragraph separators")


def test_an_optional_field_given_as_null_is_absent_on_both_paths() -> None:
    """Jackson writes nulls by default and Go without `omitempty` too; each was refused as
    wrong_type (contract review)."""
    from stream_app.codec.events import event_from_object

    base = {"event_id": "p1", "user_id": "u1", "item_id": "i1", "ts": 1_700_000_000_000}
    nulls = {"quantity": None, "price": None, "item_released_at": None, "context": None}
    for fast in (True, False):
        got = event_from_object({**base, **nulls}, EventKind.PURCHASE, fast=fast)
        assert got == event_from_object(base, EventKind.PURCHASE, fast=fast)
        assert got.quantity is got.price is got.item_released_at is got.context is None
    value = orjson.dumps({"request_id": "r", "user_id": "u1", "k": 3, "candidates": None,
                          "exclude": None, "exclude_seen": None, "explain": None})
    assert decode_score_request(value, b"u1") == ScoreRequest(request_id="r", user_id="u1", k=3)
    with pytest.raises(DecodeError) as caught:  # null is absent, not a wildcard type
        decode_event(orjson.dumps({**base, "event_id": None}), b"u1", EventKind.PURCHASE)
    assert caught.value.reason is DlqReason.WRONG_TYPE
