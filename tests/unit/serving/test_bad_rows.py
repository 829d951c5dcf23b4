"""Records on `embeddings` that a foreign or broken writer can put there: each is refused
(counted as a bad row) and the scorer goes on; none may stop it. The topic is compacted
and kept, so a record that stopped one scorer stopped every replica at every restart."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import orjson
import pytest

from stream_app.codec import DecodeError, decode_changelog_rows, encode_embedding, encode_meta
from stream_app.core import Learner, LearnerConfig
from stream_app.events import EmbeddingRow, Event, EventKind, ScoreRequest
from stream_app.serving import EmbeddingTable
from stream_app.serving.answers import apply_embedding
from stream_app.serving.topk import user_vectors
from tests.device import DEVICE

MIX = {"history_weight": 1.0, "recent_decay": 0.9, "recent_items": 20}


def _nested(depth: int) -> bytes:
    row = EmbeddingRow(entity="item", id="a", vector=np.ones(4, np.float32), bias=0.0,
                       model_version="v", updates=1, updated_at=1, last_event_ts=1)
    inner = "1"
    for _ in range(depth):
        inner = '{"x":' + inner + "}"
    return encode_embedding(row)[:-1] + b',"state":' + inner.encode() + b"}"


def _meta(serving: Any) -> bytes:
    return orjson.dumps({"model_version": "v", "updated_at": 0, "serving": serving})


@pytest.mark.parametrize("depth", [100, 600, 1000])
def test_a_row_with_a_deeply_nested_state_is_refused_by_scorer_and_restore(depth: int) -> None:
    """600 levels raised RecursionError in the scorer's load, 1000 in the trainer's restore
    (which must refuse it with the changelog error that says how to delete it)."""
    table = EmbeddingTable(device=DEVICE)
    assert apply_embedding(table, b"item:a", _nested(depth)) == "bad_state"
    assert table.n_items == 0
    with pytest.raises(DecodeError, match="nested"):
        list(decode_changelog_rows([(b"item:a", _nested(depth))]))
    assert apply_embedding(table, b"item:a", _nested(3)) is None  # shallow is fine


def _row(**fields: Any) -> bytes:
    row = EmbeddingRow(entity="item", id="a", vector=np.ones(4, np.float32), bias=0.0,
                       model_version="v", updates=1, updated_at=1, last_event_ts=1)
    obj = orjson.loads(encode_embedding(row))
    return orjson.dumps({**obj, **fields})


@pytest.mark.parametrize(("fields", "reason"), [
    ({"updates": 2**63}, "out_of_range"),  # OverflowError into the int64 column
    ({"updates": 1e300}, "out_of_range"),
    ({"state": {"v": {"b64f32": "", "shape": [2**63, 0]}}}, "bad_state"),  # numpy ValueError
    ({"state": {"v": {"b64f32": "AACAPw==", "shape": [1] * 9}}}, "bad_state"),
    ({"state": {"v": {"b64f32": "", "shape": [2**31 - 1] * 3 + [0]}}}, "bad_state"),  # bounds
])
def test_a_row_numpy_cannot_hold_is_refused_by_scorer_and_restore(
        fields: dict[str, Any], reason: str) -> None:
    """Each stopped the scorer with an exception the loop did not catch, at every restart."""
    table = EmbeddingTable(device=DEVICE)
    assert apply_embedding(table, b"item:a", _row(**fields)) == reason
    assert table.n_items == 0
    with pytest.raises(DecodeError):
        list(decode_changelog_rows([(b"item:a", _row(**fields))]))


def test_an_item_vector_whose_scores_would_overflow_is_refused() -> None:
    """A finite [3e38, ...] item made every personalised request fail as non-finite."""
    huge = EmbeddingRow(entity="item", id="a", vector=np.full(4, 3e38, np.float32), bias=0.0,
                        model_version="v", updates=1, updated_at=1, last_event_ts=1)
    table = EmbeddingTable(device=DEVICE)
    reason = apply_embedding(table, b"item:a", encode_embedding(huge))
    assert reason is not None and "vector norm 6e+38 is over 1e+06" in reason
    assert table.n_items == 0
    # Refused, it does not fix the table's dim: read first, it made the scorer refuse
    # every row of the model's own dim, and answer empty until a restart met it again.
    good = EmbeddingRow(entity="item", id="b", vector=np.ones(8, np.float32), bias=0.0,
                        model_version="v", updates=1, updated_at=1, last_event_ts=1)
    assert apply_embedding(table, b"item:b", encode_embedding(good)) is None
    assert table.n_items == 1 and table.dim == 8


@pytest.mark.parametrize("serving", [
    {**MIX, "recent_items": -1}, {**MIX, "recent_items": 0}, {**MIX, "recent_items": 10**7},
    {**MIX, "recent_items": "20"}, {**MIX, "recent_items": 20.5},
    {**MIX, "recent_decay": 1.5}, {**MIX, "history_weight": -1.0},
    {**MIX, "history_weight": "big"}, {"history_weight": 1.0, "recent_decay": 0.9}, [1, 2, 3],
    {"b64f32": "AACAPw==", "shape": [1]},  # decodes to an array: IndexError stopped the scorer
])
def test_an_unusable_serving_mix_is_refused_and_the_table_keeps_the_one_it_had(
        serving: Any) -> None:
    """recent_items -1 failed every request batch with a warm user (ValueError in the
    ranking), and 10**7 allocated a history that wide for each of them."""
    table = EmbeddingTable(device=DEVICE)
    assert apply_embedding(table, b"meta:trainer", encode_meta({
        "model_version": "v", "updated_at": 0, "serving": MIX})) is None
    before = table.mix
    assert before is not None
    assert apply_embedding(table, b"meta:trainer", _meta(serving)) in {"schema", "out_of_range"}
    assert table.mix == before
    # Users are still ranked with the mix the table kept.
    config = LearnerConfig(dim=4, num_sampled_negatives=4)
    learner = Learner(config, device=DEVICE)
    learner.learn([Event(event_id=f"e{k}", user_id="u1", item_id=f"i{k % 5}",
                         ts=1_700_000_000_000 + k, kind=EventKind.CLICK) for k in range(20)])
    for row in learner.rows(user_ids=["u1"], item_ids=learner.item_ids(), model_version="v",
                            now_ms=0):
        table.upsert(row)
    table.flush()
    got, reasons = user_vectors(table, [ScoreRequest(request_id="r", user_id="u1", k=3)], 1)
    assert reasons == [None] and np.isfinite(got.cpu().numpy()).all()


def test_a_meta_record_without_a_mix_or_a_tombstone_clears_it() -> None:
    """An older trainer's meta has no mix: not an error, the published vectors are served."""
    table = EmbeddingTable(device=DEVICE)
    assert apply_embedding(table, b"meta:trainer", _meta(MIX)) is None
    assert table.mix is not None and math.isclose(table.mix.recent_decay, 0.9)
    assert apply_embedding(table, b"meta:trainer",
                           orjson.dumps({"model_version": "v", "updated_at": 0})) is None
    assert table.mix is None
    assert apply_embedding(table, b"meta:trainer", _meta(MIX)) is None
    assert apply_embedding(table, b"meta:trainer", None) is None
    assert table.mix is None


def test_a_row_from_a_clock_ahead_does_not_hold_the_newest_time_or_the_model_version() -> None:
    """Its `updated_at` an hour ahead kept the staleness gauge below zero and the model
    version pinned for that hour, hiding a scorer that had stopped reading (review)."""
    def row(ident: str, version: str, updated_at: int) -> EmbeddingRow:
        return EmbeddingRow(entity="item", id=ident, vector=np.ones(4, np.float32), bias=0.0,
                            model_version=version, updates=1, updated_at=updated_at,
                            last_event_ts=1)

    table = EmbeddingTable(device=DEVICE)
    before = int(time.time() * 1000)
    table.upsert(row("a", "ahead", before + 3_600_000))
    assert table.newest_updated_at is not None
    assert before <= table.newest_updated_at <= int(time.time() * 1000)
    table.upsert(row("b", "next", int(time.time() * 1000) + 1))  # a few ms ahead at most
    assert table.model_version == "next"


@pytest.mark.parametrize("newer", [
    {"bias": -100.0, "vector": np.full(4, 1e6, np.float32)},  # norm 2e6: refused by the table
    {"vector": np.ones(8, np.float32)},  # another dim
])
def test_a_refused_newer_version_removes_the_row_it_would_replace(newer: dict[str, Any]) -> None:
    """The older version went on being served (an item the latest row pushes down still
    ranked first), while a replica started after compaction had no row: they disagreed."""
    def item(ident: str, **fields: Any) -> EmbeddingRow:
        base: dict[str, Any] = {"vector": np.ones(4, np.float32), "bias": 0.0}
        return EmbeddingRow(entity="item", id=ident, model_version="v", updates=1,
                            updated_at=1, last_event_ts=1, **{**base, **fields})

    table = EmbeddingTable(device=DEVICE)
    for row in (item("a", bias=5.0), item("b", bias=1.0)):
        assert apply_embedding(table, row.key.encode(), encode_embedding(row)) is None
    user = EmbeddingRow(entity="user", id="u", vector=np.ones(4, np.float32), bias=0.0,
                        model_version="v", updates=1, updated_at=1, last_event_ts=1,
                        recent_items=("a",))
    assert apply_embedding(table, b"user:u", encode_embedding(user)) is None
    assert apply_embedding(table, b"item:a", encode_embedding(item("a", **newer))) is not None
    table.flush()
    assert table.n_items == 1 and "a" not in table.item_slot
    # A refused user row goes too.
    assert "u" in table.users
    other_dim = dataclasses.replace(user, vector=np.ones(8, np.float32))
    assert apply_embedding(table, b"user:u", encode_embedding(other_dim)) is not None
    assert "u" not in table.users
