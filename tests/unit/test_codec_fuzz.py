"""Property tests: decoders raise nothing but DecodeError; the fast path agrees with the schema."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import fastjsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.codec import (
    DecodeError,
    EncodeError,
    decode_dlq,
    decode_embedding,
    decode_event,
    decode_meta,
    decode_prediction,
    decode_score_request,
    encode_embedding,
    encode_event,
    load_schemas,
)
from stream_app.codec.events import fast_event, parse_event, schema_event
from stream_app.codec.fastcheck import fast_row_vector
from stream_app.core import Learner, LearnerConfig
from stream_app.events import Event, EventKind
from stream_app.sources.generate import generate
from tests.unit.test_codec_bad_inputs import CASES, raw

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

odd_text = st.text(
    alphabet=st.sampled_from(
        ["a", "7", " ", "\n", "\x00", "\x7f", "\x85", "\u2028", "\ufeff", "é"]
    ),
    max_size=6,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, -1, 1.0, 1.5, 32503680000000, 32503679999999, 2**63 - 1, 2**63, 1e19]),
    odd_text,
    st.text(max_size=3),
    st.just("x" * 256),
    st.just("x" * 257),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = ["event_id", "user_id", "item_id", "ts", "quantity", "price", "item_released_at",
          "context", "extra"]


@st.composite
def event_like(draw: st.DrawFn) -> Any:
    """Mostly-valid event objects with a few fields replaced by odd values."""
    obj: dict[str, Any] = {"event_id": "e1", "user_id": "u1", "item_id": 5, "ts": 1700000000000}
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        if draw(st.booleans()) and field in obj:
            del obj[field]
        else:
            obj[field] = draw(json_values)
    return obj if draw(st.integers(0, 9)) else draw(json_values)


def _schema_or_none(obj: Any, kind: EventKind) -> Event | None:
    try:
        return schema_event(obj, kind)
    except DecodeError:
        return None


def _agree(obj: Any, kind: EventKind) -> None:
    fast, slow = fast_event(obj, kind), _schema_or_none(obj, kind)
    assert fast == slow, (obj, fast, slow)
    if fast is not None and slow is not None:
        assert fast.context == slow.context
        assert (type(fast.price), type(fast.quantity), type(fast.item_released_at)) == \
            (type(slow.price), type(slow.quantity), type(slow.item_released_at))


@FUZZ
@given(obj=event_like(), kind=st.sampled_from(list(EventKind)))
def test_fast_path_agrees_with_schema(obj: Any, kind: EventKind) -> None:
    _agree(obj, kind)


def _corpus() -> list[Any]:
    objs: list[Any] = []
    for case in CASES:
        value = raw(case["value"])
        try:
            objs.append(orjson.loads(value or b""))
        except orjson.JSONDecodeError:
            continue
    objs += load_schemas()["click"].examples + load_schemas()["purchase"].examples
    for record in generate(300, 20, 50, seed=5, malformed_share=0.5):
        try:
            objs.append(orjson.loads(record.value or b""))
        except orjson.JSONDecodeError:
            continue
    return objs


@pytest.mark.parametrize("kind", list(EventKind))
def test_fast_path_agrees_with_schema_on_the_corpus(kind: EventKind) -> None:
    corpus = _corpus()
    assert len(corpus) > 150
    for obj in corpus:
        _agree(obj, kind)


EVENT_FIELDS = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1700000000000,
                "quantity": 2, "price": 9.5, "item_released_at": 0, "context": {"page": 1}}
BOUND_VALUES = [None, 0, 1, -1, 1e12, 1e12 + 1, 10**12, 10**12 + 1, 1000000, 1000001,
                -62135596800000, -62135596800001, 100000000000, 99999999999,
                32503679999999, 32503680000000, 2.0, True, "7", "", "x" * 256, "x" * 257,
                [1], {}, {"a": {"b": [1, None]}}, {"t": (1, (2,))}, OrderedDict(a=[1])]


def _base(kind: EventKind) -> dict[str, Any]:
    if kind is EventKind.PURCHASE:
        return EVENT_FIELDS
    return {k: v for k, v in EVENT_FIELDS.items() if k not in ("quantity", "price")}


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(list(EVENT_FIELDS)),
                               st.one_of(scalars, st.sampled_from(BOUND_VALUES), json_values),
                               max_size=2),
       kind=st.sampled_from(list(EventKind)))
def test_the_encoder_refuses_exactly_what_a_reader_refuses(
        changes: dict[str, Any], kind: EventKind) -> None:
    _encoder_agrees_with_reader(Event(kind=kind, **{**_base(kind), **changes}))


@pytest.mark.parametrize("kind", list(EventKind))
def test_the_encoder_refuses_exactly_what_a_reader_refuses_near_every_bound(
        kind: EventKind) -> None:
    outcomes = set()
    for field in EVENT_FIELDS:
        for value in BOUND_VALUES:
            outcomes.add(_encoder_agrees_with_reader(
                Event(kind=kind, **{**_base(kind), field: value})))
    assert outcomes == {True, False}  # both sides of the check were reached


def _encoder_agrees_with_reader(event: Event) -> bool:
    """`encode_event` raises exactly when a reader refuses the value it would write (and
    with the reader's reason), else writes what a reader reads as it would the plain
    JSON of `event`; True: it wrote.
    `_surely_valid`, which skips the reader's check, must never let a refused one by."""
    optional = ("quantity", "price", "item_released_at", "context")
    obj = {k: getattr(event, k) for k in ("event_id", "user_id", "item_id", "ts")} | \
        {k: getattr(event, k) for k in optional if getattr(event, k) is not None}
    read, refused, unwritable = None, None, False
    try:
        read = parse_event(orjson.dumps(obj), event.kind)
    except DecodeError as err:
        refused = err.reason
    except orjson.JSONEncodeError:  # no JSON for it (an int past 64 bits): no reader sees it
        unwritable = True
    try:
        value = encode_event(event)
    except EncodeError as err:
        assert unwritable or err.reason is refused is not None, (event, refused, err)
        return False
    assert not unwritable, event
    assert refused is None, (event, refused)
    assert parse_event(value, event.kind) == read  # ids normalised to text as a reader does
    return True


TS_VARIANTS = [0, -1, 32503679999999, 32503680000000, 1.0, 1.5, True, "1"]
ROW_VARIANTS: dict[str, list[Any]] = {
    "entity": ["user", "item", "thing", 1, None, ["user"]],
    "id": ["i1", "", "x" * 256, "x" * 257, "i\n", "i\u2028", 5, None],
    "dim": [1, 4096, 4097, 0, 2.0, 2.5, True, "1"],
    "vector": ["AACAPw==", "AACAPw=", "AACAP", "AACAPw==\n", "AACA Pw==", "", "====", 1,
               "AB==", "AAA=", "A===", "AAAA=", "AA=A", "=AAA", "AAAA====", "AAAAAA==AAAA",
               "AAA-", "AAA_", "\u00e9AAA"],
    "bias": [0.5, 0, -3, True, "0.5", None],
    "model_version": ["v", "", "v" * 128, "v" * 129, 1],
    "updates": [0, -1, 3.0, 3.5, True, 2**70],
    "updated_at": TS_VARIANTS,
    "last_event_ts": TS_VARIANTS,
    "recent_items": [[], ["i1"], ["i1"] * 1000, ["i1"] * 1001, ["i\n"], ["x" * 257], [""],
                     [1], None, "i1", ["a", "b\x7f"]],
    "state": [{}, {"a": 1}, [], None, 1],
    "extra": [1],
}


@st.composite
def row_like(draw: st.DrawFn) -> Any:
    """Embedding rows (each schema example) with up to two fields changed or removed:
    each field's variants sit on both sides of its rules."""
    obj = dict(draw(st.sampled_from(load_schemas()["embedding"].examples)))
    for field in draw(st.lists(st.sampled_from(sorted(ROW_VARIANTS)), max_size=2)):
        if draw(st.integers(0, 5)) == 0:
            obj.pop(field, None)
        else:
            obj[field] = draw(st.sampled_from(ROW_VARIANTS[field]) | json_values)
    return obj if draw(st.integers(0, 19)) else draw(json_values)


def _schema_accepts(obj: Any) -> bool:
    try:
        load_schemas()["embedding"].validate(obj)
    except fastjsonschema.JsonSchemaValueException:
        return False
    return True


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=row_like())
def test_fast_row_check_agrees_with_schema(obj: Any) -> None:
    assert (fast_row_vector(obj) is not None) == _schema_accepts(obj), obj


def test_fast_row_check_accepts_what_the_trainer_publishes() -> None:
    learner = Learner(LearnerConfig(dim=4, num_sampled_negatives=4), device="cpu")
    learner.learn([Event(event_id=f"e{k}", user_id=f"u{k % 7}", item_id=f"i{k % 5}",
                         ts=1_700_000_000_000 + k, kind=EventKind.PURCHASE) for k in range(40)])
    rows = learner.rows(user_ids=learner.user_ids(), item_ids=learner.item_ids(),
                        model_version="v", now_ms=1)
    objs = [orjson.loads(encode_embedding(r)) for r in rows]
    objs += load_schemas()["embedding"].examples
    assert len(objs) > 10
    assert all(fast_row_vector(o) is not None and _schema_accepts(o) for o in objs)


DECODERS: list[Callable[[bytes | None, bytes | None], object]] = [
    lambda v, k: decode_event(v, k, EventKind.CLICK),
    lambda v, k: decode_event(v, k, EventKind.PURCHASE),
    decode_score_request,
    lambda v, k: decode_embedding(k, v),
    lambda v, k: decode_prediction(v),
    lambda v, k: decode_dlq(v),
    lambda v, k: decode_meta(v),
]


def _only_decode_errors(value: bytes | None, key: bytes | None) -> None:
    for decoder in DECODERS:
        try:
            decoder(value, key)
        except DecodeError as err:
            assert err.reason and isinstance(err.detail, str)


@FUZZ
@given(
    value=st.one_of(st.none(), st.binary(max_size=200)),
    key=st.one_of(st.none(), st.binary(max_size=12)),
)
def test_random_bytes_raise_only_decode_error(value: bytes | None, key: bytes | None) -> None:
    _only_decode_errors(value, key)


@FUZZ
@given(
    obj=st.one_of(event_like(), json_values),
    key=st.sampled_from([b"u1", b"item:i1", b"user:u1", None]),
)
def test_random_json_raises_only_decode_error(obj: Any, key: bytes | None) -> None:
    _only_decode_errors(_dumps(obj), key)


EXAMPLES = [example for s in load_schemas().values() for example in s.examples]


@FUZZ
@given(data=st.data(), base=st.sampled_from(EXAMPLES), value=json_values)
def test_mutated_examples_raise_only_decode_error(
    data: st.DataObject, base: dict[str, Any], value: Any
) -> None:
    """Each schema example with one field set to an odd value, on every decoder."""
    field = data.draw(st.sampled_from(sorted(base)))
    mutated = {**base, field: value}
    for key in (b"u42", b"item:sku-981", b"user:u42", b"r-1"):
        _only_decode_errors(_dumps(mutated), key)


def _dumps(obj: Any) -> bytes:
    """stdlib json: unlike orjson it writes integers beyond 64 bits, which producers may send."""
    return json.dumps(obj).encode()
