"""The restore's columnar decode accepts and refuses exactly what `decode_embedding` does."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stream_app.codec import (
    DecodeError,
    DlqReason,
    decode_changelog_rows,
    decode_embedding,
    encode_embedding,
)
from stream_app.codec.wire import b64encode
from stream_app.core import Learner, LearnerConfig
from stream_app.events import ChangelogRows, EmbeddingRow, Event, EventKind
from tests.unit.test_codec_bad_inputs import CASES, raw
from tests.unit.test_codec_fuzz import row_like

KV = tuple[bytes | None, bytes]


def _published(optimizer: str = "adagrad") -> list[KV]:
    """Every row a small learner publishes, users and items shuffled together."""
    learner = Learner(LearnerConfig(dim=4, num_sampled_negatives=4, optimizer=optimizer),
                      device="cpu")
    learner.learn([Event(event_id=f"e{k}", user_id=f"u{k % 7}", item_id=f"i{k % 5}",
                         ts=1_700_000_000_000 + k, kind=EventKind.PURCHASE,
                         item_released_at=1_600_000_000_000 if k % 5 == 1 else None)
                   for k in range(40)])
    rows = learner.rows(user_ids=learner.user_ids(), item_ids=learner.item_ids(),
                        model_version="v", now_ms=1)
    records: list[KV] = [(r.key.encode(), encode_embedding(r)) for r in rows]
    random.Random(0).shuffle(records)  # noqa: S311 - a fixed test order
    return records


def _row_by_row(records: list[KV]) -> list[ChangelogRows]:
    """What the columns must equal: each record decoded alone, grouped by entity."""
    rows = [decode_embedding(k, v) for k, v in records]
    groups: dict[str, list[EmbeddingRow]] = {"user": [], "item": []}
    for row in rows:
        assert row is not None
        groups[row.entity].append(row)
    return [ChangelogRows.of(g) for g in groups.values() if g]


def _assert_same(got: list[ChangelogRows], want: list[ChangelogRows]) -> None:
    assert [(b.entity, b.ids, b.updates, b.last_event_ts, b.recent_items) for b in got] == \
        [(b.entity, b.ids, b.updates, b.last_event_ts, b.recent_items) for b in want]
    for a, b in zip(got, want, strict=True):
        assert a.vectors.dtype == np.float32 and a.vectors.tobytes() == b.vectors.tobytes()
        _assert_same_tree(a.state, b.state)


def _assert_same_tree(a: Any, b: Any) -> None:
    """Equal column trees; arrays bit for bit (a list of arrays equals their stack)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            _assert_same_tree(a[key], b[key])
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
        assert x.shape == y.shape and x.tobytes() == y.tobytes()
    elif isinstance(a, list):  # per-row values: arrays of several shapes, None, scalars
        assert isinstance(b, list) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_tree(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_published_rows_decode_as_row_by_row(optimizer: str) -> None:
    records = _published(optimizer)
    got = decode_changelog_rows(records)
    assert [b.entity for b in got] == ["user", "item"]
    assert isinstance(got[0].state["id_vec"], np.ndarray)  # stacked, not per-row arrays
    _assert_same(got, _row_by_row(records))


def _reason(records: list[KV]) -> str | None:
    try:
        decode_changelog_rows(records)
    except DecodeError as err:
        return err.reason.value
    return None


@pytest.mark.parametrize("case", [c for c in CASES if c["topic"] == "embedding"
                                  and c["value"] is not None], ids=lambda c: c["name"])
def test_bad_row_is_refused_with_its_reason(case: dict[str, Any]) -> None:
    bad = (raw(case["key"]), raw(case["value"]))
    assert _reason([bad]) == case["reason"]
    assert _reason([*_published()[:5], bad]) == case["reason"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=row_like())
def test_any_row_decodes_or_fails_as_row_by_row(obj: Any) -> None:
    key = f"{obj.get('entity')}:{obj.get('id')}".encode() if isinstance(obj, dict) \
        else b"item:i1"
    value = json.dumps(obj).encode()
    try:
        want = _row_by_row([(key, value)])
    except DecodeError as err:
        assert _reason([(key, value)]) == err.reason.value
        return
    _assert_same(decode_changelog_rows([(key, value)]), want)


_PLAIN_ROW = {"entity": "user", "id": "u42", "dim": 1, "vector": "AACAPw==", "bias": 0.0,
              "model_version": "v", "updates": 3, "updated_at": 1, "last_event_ts": 1}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objs=st.lists(row_like(), min_size=2, max_size=3))
@example(objs=[_PLAIN_ROW, {**_PLAIN_ROW, "state": {"v": {"b64f32": "AACAPwAAAEA=",
                                                          "shape": [2]}}}])  # [None, array]
def test_rows_decoded_together_fail_as_the_bad_one_alone(objs: list[Any]) -> None:
    """Several rows in one call: all good gives the row-by-row columns; with one bad row,
    its own reason (with more than one, any of theirs)."""
    records = [(f"{o.get('entity')}:{o.get('id')}".encode() if isinstance(o, dict)
                else b"item:i1", json.dumps(o).encode()) for o in objs]
    reasons = {r for r in (_reason([kv]) for kv in records) if r is not None}
    if not reasons:
        try:
            want = _row_by_row(records)
        except DecodeError as err:  # rows of one entity with different dims
            assert err.reason == DlqReason.BAD_VECTOR and _reason(records) == "bad_vector"
            return
        _assert_same(decode_changelog_rows(records), want)
    else:
        assert _reason(records) in reasons


def _user(ident: str, acc: list[float], dim: int = 2, shape: Any = None) -> KV:
    obj = {"entity": "user", "id": ident, "dim": dim, "vector": b64encode(bytes(4 * dim)),
           "bias": 0.0, "model_version": "v", "updates": 1, "updated_at": 1,
           "last_event_ts": 1, "state": {"id_vec": {
               "b64f32": b64encode(np.asarray(acc, dtype="<f4").tobytes()),
               "shape": [2] if shape is None else shape}}}
    return f"user:{ident}".encode(), orjson.dumps(obj)


def test_state_arrays_are_checked_row_by_row() -> None:
    """A short array beside a long one of the same shape is refused, not joined."""
    assert _reason([_user("a", [1.0]), _user("b", [1.0, 2.0, 3.0])]) == DlqReason.BAD_STATE
    ok = decode_changelog_rows([_user("a", [1.0, 2.0]), _user("b", [3.0, 4.0])])
    assert ok[0].state["id_vec"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize("shape", [[2.0], [True, 2], "2"])
def test_every_row_s_array_shape_is_checked(shape: Any) -> None:
    """Not only the first row's: a later [2.0] equals [2] but the schema refuses it."""
    assert _reason([_user("a", [1.0, 2.0]), _user("b", [3.0, 4.0], shape=shape)]) == "bad_state"


def test_a_state_that_is_one_array_is_refused() -> None:
    key, value = _user("a", [1.0, 2.0])
    obj = orjson.loads(value)
    obj["state"] = obj["state"]["id_vec"]
    assert decode_embedding(key, orjson.dumps(obj)) is not None  # the wire allows it
    assert _reason([(key, orjson.dumps(obj))]) == "bad_state"
    obj["state"]["b64f32"] = "!!!!"
    assert _reason([(key, orjson.dumps(obj))]) == "bad_state"


def test_rows_of_different_dims_are_refused() -> None:
    with pytest.raises(DecodeError, match="dims") as caught:
        decode_changelog_rows([_user("a", [1.0, 2.0], dim=2), _user("b", [1.0, 2.0], dim=3)])
    assert caught.value.reason == DlqReason.BAD_VECTOR


def test_a_non_finite_vector_is_refused_with_its_key() -> None:
    key, value = _user("bad", [1.0, 2.0])
    obj = orjson.loads(value)
    obj["vector"] = b64encode(np.array([1.0, np.nan], dtype="<f4").tobytes())
    with pytest.raises(DecodeError, match="user:bad") as caught:
        decode_changelog_rows([_user("a", [1.0, 2.0]), (key, orjson.dumps(obj))])
    assert caught.value.reason == DlqReason.NON_FINITE


@pytest.mark.parametrize(("entity", "drop", "message"), [
    ("user", "id_vec", "lacks id_vec"),
    ("user", "opt", "lacks optimiser slot 'acc'"),
    ("item", "logpop", "lacks logpop"),
])
def test_a_row_without_its_learner_state_is_refused_on_apply(
        entity: str, drop: str, message: str) -> None:
    """Valid on the wire (state is the learner's), but the learner cannot restore it."""
    records = [(k, v) for k, v in _published() if k is not None and k.startswith(entity.encode())]
    key, value = records[-1]
    obj = orjson.loads(value)
    del obj["state"][drop]
    fresh = Learner(LearnerConfig(dim=4, num_sampled_negatives=4), device="cpu")
    blocks = decode_changelog_rows([*records[:-1], (key, orjson.dumps(obj))])
    with pytest.raises(ValueError, match=message):
        fresh.apply_columns(blocks[0])


def test_an_id_vector_of_another_dim_is_refused_on_apply() -> None:
    """A (n, 1) column would fill each row with one value (numpy broadcasts)."""
    fresh = Learner(LearnerConfig(dim=2, num_sampled_negatives=4), device="cpu")
    key, value = _user("a", [1.0], shape=[1])
    obj = orjson.loads(value)
    obj["state"]["opt"] = {"acc": 0.0}
    with pytest.raises(ValueError, match="shape"):
        fresh.apply_columns(decode_changelog_rows([(key, orjson.dumps(obj))])[0])


@pytest.mark.parametrize("wrap", [lambda v: [v], lambda v: {"k": v}])
def test_the_nesting_limit_is_a_lone_row_s(wrap: Any) -> None:
    """The columnar decode restarted the depth count under each key of the state, so a row
    that decode_embedding refuses (nested past STATE_MAX_DEPTH) was restored (codec review)."""
    from stream_app.events import STATE_MAX_DEPTH

    for levels, refused in ((STATE_MAX_DEPTH - 1, False), (STATE_MAX_DEPTH, True)):
        nested: Any = 1
        for _ in range(levels):
            nested = wrap(nested)
        row = orjson.dumps({"entity": "item", "id": "i1", "dim": 1, "vector": "AACAPw==",
                            "bias": 0.5, "model_version": "v1", "updates": 3,
                            "updated_at": 1, "last_event_ts": 1, "state": {"a": nested}})
        alone: Any
        try:
            alone = decode_embedding(b"item:i1", row)
        except DecodeError as err:
            alone = err.reason
        together: Any
        try:
            together = decode_changelog_rows([(b"item:i1", row)])
        except DecodeError as err:
            together = err.reason
        assert isinstance(alone, DlqReason) == refused
        assert isinstance(together, DlqReason) == refused, (levels, together)
