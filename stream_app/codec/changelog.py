"""The restore's decode of `embeddings` rows: whole runs of rows as columns (`ChangelogRows`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from stream_app.codec.embeddings import decode_embedding
from stream_app.codec.exceptions import DecodeError, DlqReason
from stream_app.codec.fastcheck import fast_row_vector
from stream_app.codec.state import (
    ARRAY_KEYS,
    F32,
    SCALARS,
    array_column,
    decode_state,
    encode_state,
)
from stream_app.codec.wire import MESSAGE_MAX_BYTES, intern_id
from stream_app.events import ChangelogRows, Entity, state_columns, writer_of


def decode_changelog_rows(records: list[tuple[bytes | None, bytes]]) -> list[ChangelogRows]:
    """Decode rows of `embeddings` (no tombstones) as columns: users' block, then items'.

    The restore's decode (`ChangelogRows` says why); each block keeps its
    rows in log order. Each row is checked as `decode_embedding` checks it,
    and a bad row raises the `DecodeError` that `decode_embedding` raises
    for it. Vectors' finiteness and state arrays are checked per block once
    every row is read, so where several rows are bad the one reported may
    not be the first. Two refusals are this decode's own (bad_state /
    bad_vector): a state that is one array rather than an object of fields,
    and rows of one entity with vectors of different dims; no learner writes
    either, nor could restore them.
    """
    blocks: dict[Entity, _Block] = {"user": _Block(), "item": _Block()}
    for key, value in records:
        obj, raw = _checked_row(key, value)
        blocks[obj["entity"]].add(obj, raw)
    return [block.columns(entity) for entity, block in blocks.items() if block.ids]


def _checked_row(key: bytes | None, value: bytes) -> tuple[dict[str, Any], bytes]:
    """A valid row's JSON object (state still encoded) and its vector's bytes."""
    obj: Any = None
    if len(value) <= MESSAGE_MAX_BYTES:
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
    raw = fast_row_vector(obj)
    if raw is not None and len(raw) == 4 * obj["dim"] \
            and key == f"{obj['entity']}:{obj['id']}".encode():
        return obj, raw
    # Not the common case: the row-by-row decode raises the precise reason, or
    # accepts a row in a form only the schema checks; its state is re-encoded.
    row = decode_embedding(key, value)
    if row is None:
        raise DecodeError(DlqReason.MISSING_VALUE, "value is null")
    obj = {"entity": row.entity, "id": row.id, "dim": len(row.vector),
           "model_version": row.model_version, "updates": row.updates,
           "last_event_ts": row.last_event_ts, "recent_items": list(row.recent_items),
           "state": encode_state(row.state, row.key)}
    return obj, row.vector.astype(F32).tobytes()


class _Block:
    """The rows of one entity being decoded, kept as `decode_changelog_rows` reads them."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.vectors: list[bytes] = []
        self.dims: set[int] = set()
        self.updates: list[int] = []
        self.last_event_ts: list[int] = []
        self.recent_items: list[tuple[str, ...]] = []
        self.states: list[dict[str, Any]] = []
        self.writers: list[str] = []

    def add(self, obj: dict[str, Any], vector: bytes) -> None:
        self.ids.append(obj["id"])
        self.vectors.append(vector)
        self.dims.add(obj["dim"])
        self.updates.append(int(obj["updates"]))
        self.last_event_ts.append(int(obj["last_event_ts"]))
        self.writers.append(writer_of(obj["model_version"]))
        # Interned, as `decode_embedding` does.
        self.recent_items.append(tuple(map(intern_id, obj.get("recent_items", ()))))
        state = obj.get("state", {})
        if state.keys() == ARRAY_KEYS:
            decode_state(state)  # decode_embedding's reason if it is a bad array
            raise DecodeError(DlqReason.BAD_STATE, f"{obj['entity']}:{obj['id'][:64]}: state "
                              "is one array, not an object of the learner's fields")
        self.states.append(state)

    def columns(self, entity: Entity) -> ChangelogRows:
        if len(self.dims) != 1:
            raise DecodeError(DlqReason.BAD_VECTOR,
                              f"{entity} rows of one read have dims {sorted(self.dims)}: "
                              "the changelog mixes models of different dims")
        vectors = np.frombuffer(bytearray().join(self.vectors), dtype=F32)
        vectors = vectors.reshape(len(self.ids), -1)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = self.ids[int(np.argmin(finite))]
            raise DecodeError(DlqReason.NON_FINITE, f"{entity}:{bad[:64]}: vector holds NaN "
                              "or Infinity")
        try:
            state = state_columns(self.states, _state_leaf)
        except ValueError as exc:
            raise DecodeError(DlqReason.BAD_STATE, f"{entity} rows: {exc}") from exc
        return ChangelogRows(entity=entity, ids=self.ids, vectors=vectors, updates=self.updates,
                             last_event_ts=self.last_event_ts, recent_items=self.recent_items,
                             state=state, writers=self.writers)


def _state_leaf(values: list[Any], depth: int) -> Any | None:
    """`state_columns`' leaf for encoded states: arrays of one shape decode into one. Values
    are decoded at their depth in the state, so the nesting limit is `decode_embedding`'s:
    from 0 at each key, a row nested deeper than a lone row may be was restored."""
    arrays = [type(v) is dict and v.keys() == ARRAY_KEYS for v in values]
    if not any(arrays):
        if any(type(v) is dict for v in values) \
                and all(type(v) is dict or v is None for v in values):
            return None
        return [v if type(v) in SCALARS else decode_state(v, depth + 1) for v in values]
    if all(arrays) and (column := array_column(values)) is not None:
        return column
    return [decode_state(v, depth + 1) for v in values]  # each row's own array, or error
