"""The trainer's column path for rows (`RowBlock`, `encode_rows`) publishes exactly its rows.

The wire format is pinned by the independent decoder: every encoded row must
decode to the row `RowBlock.rows()` gives, arrays bit for bit, for both
optimisers and items with and without a release time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import orjson
import pytest

from stream_app.codec import EncodeError, decode_embedding, encode_embedding, encode_rows
from stream_app.core import Learner
from stream_app.events import EmbeddingRow, RowBlock, state_rows
from tests.unit.core.streams import T0, random_events, small_config


def _learned(optimizer: str) -> Learner:
    learner = Learner(small_config(optimizer=optimizer), device="cpu")
    for b in range(3):
        events = random_events(64, seed=b, start=64 * b)
        learner.learn([dataclasses.replace(e, item_released_at=T0 if int(e.item_id[1:]) % 2
                                           else None) for e in events])
    return learner


def _blocks(learner: Learner) -> list[RowBlock]:
    return learner.row_blocks(user_ids=learner.user_ids(), item_ids=learner.item_ids(),
                              model_version="v7", now_ms=T0 + 5)


def _same_state(got: Any, want: Any) -> None:
    if isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            _same_state(got[key], want[key])
    else:
        assert got == want and type(got) is type(want)


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_every_encoded_row_decodes_to_the_blocks_row(optimizer: str) -> None:
    blocks = _blocks(_learned(optimizer))
    assert [b.entity for b in blocks] == ["user", "item"]
    released = 0
    for block in blocks:
        values = encode_rows(block)
        for want, value in zip(block.rows(), values, strict=True):
            got = decode_embedding(want.key.encode(), value)
            assert got == want
            assert got.vector.tobytes() == want.vector.tobytes()
            _same_state(got.state, want.state)
            released += "released_at" in want.state
    assert 0 < released < len(blocks[1])


def test_a_row_alone_encodes_as_in_its_block() -> None:
    (users, items) = _blocks(_learned("adagrad"))
    for block in (users, items):
        assert [encode_embedding(r) for r in block.rows()] == encode_rows(block)


def test_rows_keep_the_field_order_of_the_schema_examples() -> None:
    (users, _) = _blocks(_learned("adagrad"))
    obj = orjson.loads(encode_rows(users)[0])
    assert list(obj) == ["entity", "id", "dim", "vector", "bias", "model_version", "updates",
                         "updated_at", "last_event_ts", "recent_items", "state"]
    assert list(obj["state"]) == ["format", "id_vec", "opt"]


def test_a_non_finite_row_is_refused_by_its_key() -> None:
    (users, _) = _blocks(_learned("adagrad"))
    vectors = users.vectors.copy()
    vectors[3, 1] = np.nan
    with pytest.raises(EncodeError, match=f"user:{users.ids[3]}:"):
        encode_rows(dataclasses.replace(users, vectors=vectors))
    state = {**users.state, "opt": {"acc": [*users.state["opt"]["acc"][:-1], float("inf")]}}
    with pytest.raises(EncodeError, match="finite"):
        encode_rows(dataclasses.replace(users, state=state))


def test_state_columns_must_have_a_value_per_row() -> None:
    with pytest.raises(ValueError, match="'acc' has 1 entries for 2 rows"):
        state_rows({"opt": {"acc": [1.0]}}, 2, list)


def test_empty_and_zero_dimensional_arrays_keep_their_shapes() -> None:
    row = EmbeddingRow(entity="item", id="i", vector=np.zeros(2, dtype=np.float32), bias=0.0,
                       model_version="v", updates=1, updated_at=1, last_event_ts=1,
                       state={"empty": np.zeros(0, dtype=np.float32),
                              "scalar": np.array(2.5, dtype=np.float32)})
    back = decode_embedding(b"item:i", encode_embedding(row))
    assert back is not None and back.state["empty"].shape == (0,)
    assert back.state["scalar"].shape == () and back.state["scalar"] == 2.5
    (again,) = RowBlock.of(row).rows()
    assert isinstance(again.state["scalar"], np.ndarray) and again.state["scalar"].shape == ()
