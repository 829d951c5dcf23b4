"""Embedding rows and the trainer meta record on the compacted `embeddings` topic.

`embedding.v1.json`: the vector is base64 of little-endian float32, exactly
dim*4 bytes. Learner state arrays travel as {"b64f32", "shape"} so the trainer
restores its model bit-exactly from this topic (it is the model's changelog).
"""

from __future__ import annotations

import math
import sys
from typing import Any

import fastjsonschema
import numpy as np
import orjson

from stream_app.codec.exceptions import DecodeError, DlqReason, EncodeError
from stream_app.codec.fastcheck import fast_row_vector
from stream_app.codec.schemas import Schema, error_for, schema
from stream_app.codec.wire import (
    MESSAGE_MAX_BYTES,
    b64decode,
    b64encode,
    check_value,
    decode_key,
    parse_object,
)
from stream_app.events import (
    ChangelogRows,
    EmbeddingRow,
    Entity,
    RowBlock,
    state_columns,
    state_rows,
)

META_KEY = b"meta:trainer"
"""Key of the trainer's global-state record (trainer-meta.v1.json) on `embeddings`."""
_ENTITIES: dict[str, Entity] = {"user": "user", "item": "item"}
_ARRAY_KEYS = frozenset({"b64f32", "shape"})
_SCALARS = frozenset({int, float, str, bool, type(None)})
_F32 = np.dtype("<f4")
_ROW = schema("embedding")
_META = schema("trainer-meta")


def is_meta_key(key: bytes | None) -> bool:
    """True for `meta:trainer`, the one key on `embeddings` that is not a row."""
    return key == META_KEY


def encode_embedding(row: EmbeddingRow) -> bytes:
    """The JSON value of a row (its key is `row.key.encode()`); refuses non-finite values.

    A None in `row.state` is left out (`RowBlock`'s convention for an absent key).
    """
    return encode_rows(RowBlock.of(row))[0]


def encode_rows(block: RowBlock) -> list[bytes]:
    """The JSON value of every row of `block`, in order; refuses non-finite values.

    Checks run on whole columns; per row there is one dict and one `orjson.dumps`.
    """
    n = len(block)
    vectors = block.vectors
    if vectors.ndim != 2 or vectors.dtype != np.float32 or vectors.shape[0] != n:
        raise EncodeError(f"{block.entity} rows: vectors must be ({n}, dim) float32, "
                          f"got {vectors.dtype}{vectors.shape}")
    finite = np.isfinite(vectors).all(axis=1) & np.isfinite(np.asarray(block.biases, dtype=float))
    if not finite.all():
        bad = block.ids[int(np.argmin(finite))]
        raise EncodeError(f"{block.entity}:{bad}: vector and bias must be finite")
    where = f"{block.entity} rows"
    states = state_rows(_checked_columns(block.state, where), n,
                        lambda a: _array_objects(a, where))
    recent = block.recent_items
    vector_b64 = _b64_rows(vectors)
    dim = vectors.shape[1]
    out = []
    for k, ident in enumerate(block.ids):
        obj: dict[str, Any] = {
            "entity": block.entity,
            "id": ident,
            "dim": dim,
            "vector": vector_b64[k],
            "bias": float(block.biases[k]),
            "model_version": block.model_version,
            "updates": block.updates[k],
            "updated_at": block.updated_at,
            "last_event_ts": block.last_event_ts[k],
        }
        if recent is not None and recent[k]:
            obj["recent_items"] = recent[k]
        if states[k]:
            obj["state"] = states[k]
        out.append(_dumps(obj, f"{block.entity}:{ident}"))
    return out


def _checked_columns(columns: dict[str, Any], where: str) -> dict[str, Any]:
    """`columns` with each per-row list value made JSON-able (`encode_state`'s rules)."""
    out: dict[str, Any] = {}
    for key, col in columns.items():
        if isinstance(col, dict):
            if col.keys() == _ARRAY_KEYS:
                raise EncodeError(
                    f"{where}: an object with exactly b64f32/shape is reserved for arrays")
            out[key] = _checked_columns(col, where)
        elif isinstance(col, np.ndarray):
            out[key] = col
        elif isinstance(col, list):
            out[key] = [v if v is None or type(v) is int or type(v) is str
                        else encode_state(v, where) for v in col]
        else:
            out[key] = encode_state(col, where)
    return out


def _array_objects(arrays: np.ndarray[Any, Any], where: str) -> list[dict[str, Any]]:
    """{"b64f32", "shape"} of each row of a float32 state column."""
    if arrays.dtype != np.float32:
        raise EncodeError(f"{where}: state arrays must be float32, got {arrays.dtype}")
    shape = list(arrays.shape[1:])
    return [{"b64f32": b64, "shape": shape} for b64 in _b64_rows(arrays)]


def _b64_rows(arrays: np.ndarray[Any, Any]) -> list[str]:
    """Base64 of each row's little-endian float32 bytes, from one host copy."""
    n = len(arrays)
    raw = np.ascontiguousarray(arrays, dtype=_F32).tobytes()
    width = len(raw) // n if n else 0
    return [b64encode(raw[k * width:(k + 1) * width]) for k in range(n)]


def decode_embedding(
    key: bytes | None, value: bytes | None, *, with_state: bool = True
) -> EmbeddingRow | None:
    """Decode one `embeddings` record; None for a tombstone (null value).

    `with_state=False` leaves `state` empty (about a sixth faster), for readers
    that need only the served vector; the scorer reads the users' `id_vec`
    and the trainer restores its model from the state.

    The key must be `user:<id>` / `item:<id>` matching the value's entity and id;
    `meta:trainer` is refused with reason bad_key (check `is_meta_key` first).
    """
    entity, ident = split_embedding_key(key)
    if value is None:
        return None
    obj = parse_object(check_value(value, MESSAGE_MAX_BYTES))
    raw = fast_row_vector(obj)
    if raw is None:
        _validate(_ROW, obj)
        raw = b64decode(obj["vector"], DlqReason.BAD_VECTOR, "vector")
    if obj["entity"] != entity or obj["id"] != ident:
        raise DecodeError(
            DlqReason.KEY_MISMATCH,
            f"key {entity}:{ident[:64]} != value {obj['entity']}:{obj['id'][:64]}",
        )
    dim: int = obj["dim"]
    if len(raw) != 4 * dim:
        raise DecodeError(
            DlqReason.BAD_VECTOR, f"vector has {len(raw)} bytes, dim {dim} needs {4 * dim}"
        )
    vector = np.frombuffer(raw, dtype=_F32).astype(np.float32)
    if not np.isfinite(vector).all():
        raise DecodeError(DlqReason.NON_FINITE, "vector holds NaN or Infinity")
    return EmbeddingRow(
        entity=entity,
        id=ident,
        vector=vector,
        bias=float(obj["bias"]),
        model_version=obj["model_version"],
        updates=int(obj["updates"]),
        updated_at=int(obj["updated_at"]),
        last_event_ts=int(obj["last_event_ts"]),
        # Interned: a user row lists up to 20 item ids, and without sharing every
        # user held its own copies (at 20 per user 1.2 KB, seven times the user's
        # vector, in the scorer's table and in a restore; BENCHMARKS.md, Restore).
        recent_items=tuple(map(sys.intern, obj.get("recent_items", ()))),
        state=decode_state(obj.get("state", {})) if with_state else {},
    )


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
           "updates": row.updates, "last_event_ts": row.last_event_ts,
           "recent_items": list(row.recent_items), "state": encode_state(row.state, row.key)}
    return obj, row.vector.astype(_F32).tobytes()


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

    def add(self, obj: dict[str, Any], vector: bytes) -> None:
        self.ids.append(obj["id"])
        self.vectors.append(vector)
        self.dims.add(obj["dim"])
        self.updates.append(int(obj["updates"]))
        self.last_event_ts.append(int(obj["last_event_ts"]))
        # Interned, as `decode_embedding` does.
        self.recent_items.append(tuple(map(sys.intern, obj.get("recent_items", ()))))
        state = obj.get("state", {})
        if state.keys() == _ARRAY_KEYS:
            decode_state(state)  # decode_embedding's reason if it is a bad array
            raise DecodeError(DlqReason.BAD_STATE, f"{obj['entity']}:{obj['id'][:64]}: state "
                              "is one array, not an object of the learner's fields")
        self.states.append(state)

    def columns(self, entity: Entity) -> ChangelogRows:
        if len(self.dims) != 1:
            raise DecodeError(DlqReason.BAD_VECTOR,
                              f"{entity} rows of one read have dims {sorted(self.dims)}: "
                              "the changelog mixes models of different dims")
        vectors = np.frombuffer(bytearray().join(self.vectors), dtype=_F32)
        vectors = vectors.reshape(len(self.ids), -1)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = self.ids[int(np.argmin(finite))]
            raise DecodeError(DlqReason.NON_FINITE, f"{entity}:{bad[:64]}: vector holds NaN "
                              "or Infinity")
        return ChangelogRows(entity=entity, ids=self.ids, vectors=vectors, updates=self.updates,
                             last_event_ts=self.last_event_ts, recent_items=self.recent_items,
                             state=state_columns(self.states, _state_leaf))


def _state_leaf(values: list[Any]) -> Any | None:
    """`state_columns`' leaf for encoded states: arrays of one shape decode into one."""
    arrays = [type(v) is dict and v.keys() == _ARRAY_KEYS for v in values]
    if not any(arrays):
        if any(type(v) is dict for v in values) \
                and all(type(v) is dict or v is None for v in values):
            return None
        return [v if type(v) in _SCALARS else decode_state(v) for v in values]
    if all(arrays):
        shape = values[0]["shape"]
        parts = [v["b64f32"] for v in values]
        # Each row's shape is checked, not only compared: [2.0] == [2] in Python.
        if all(type(p) is str for p in parts) and all(
                type(v["shape"]) is list and v["shape"] == shape
                and all(type(n) is int and n >= 0 for n in v["shape"]) for v in values):
            raws = [b64decode(p, DlqReason.BAD_STATE, "state array") for p in parts]
            size = 4 * math.prod(shape)
            if all(len(r) == size for r in raws):
                joined = bytearray().join(raws)
                return np.frombuffer(joined, dtype=_F32).reshape(len(values), *shape)
    return [decode_state(v) for v in values]  # each row's own array, or its own error


def encode_meta(meta: dict[str, Any]) -> bytes:
    """The `meta:trainer` value; validated against trainer-meta.v1.json (it is rare)."""
    obj = encode_state(meta, "meta:trainer")
    try:
        _META.validate(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise EncodeError(f"meta:trainer: {exc.message}") from exc
    return _dumps(obj, "meta:trainer")


def decode_meta(value: bytes | None) -> dict[str, Any]:
    """The trainer's global state, with float32 arrays restored."""
    state: dict[str, Any] = decode_state(_validated(_META, check_value(value, MESSAGE_MAX_BYTES)))
    return state


def encode_state(state: Any, where: str) -> Any:
    """JSON-able copy of `state`: float32 arrays become {"b64f32", "shape"}, anywhere inside.

    Exact types are tested first: every published row goes through here, and
    the common ones (dict, float, int, str, float32 array) need no isinstance chain.
    """
    kind = type(state)
    if kind is float:
        if not math.isfinite(state):
            raise EncodeError(f"{where}: state floats must be finite (JSON has no NaN)")
        return state
    if kind is int or kind is str or kind is bool or state is None:
        return state
    if kind is dict:
        if state.keys() == _ARRAY_KEYS:
            raise EncodeError(
                f"{where}: an object with exactly b64f32/shape is reserved for arrays"
            )
        return {str(k): encode_state(v, where) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        if state.dtype != np.float32:
            raise EncodeError(f"{where}: state arrays must be float32, got {state.dtype}")
        raw = np.ascontiguousarray(state, dtype=_F32).tobytes()
        return {"b64f32": b64encode(raw), "shape": list(state.shape)}
    if isinstance(state, dict):
        return encode_state(dict(state), where)
    if isinstance(state, list | tuple):
        return [encode_state(v, where) for v in state]
    if isinstance(state, np.generic):
        return encode_state(state.item(), where)
    if isinstance(state, float):  # a float subclass
        return encode_state(float(state), where)
    return state


def decode_state(obj: Any) -> Any:
    """Inverse of `encode_state`: {"b64f32", "shape"} objects become writable float32 arrays.

    Scalars are kept without a call each: a restore decodes every row's state.
    """
    kind = type(obj)
    if kind is dict:
        if obj.keys() == _ARRAY_KEYS:
            return _decode_array(obj)
        return {k: v if type(v) in _SCALARS else decode_state(v) for k, v in obj.items()}
    if kind is list:
        return [v if type(v) in _SCALARS else decode_state(v) for v in obj]
    return obj


def _decode_array(obj: dict[str, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    shape = obj["shape"]
    if (
        not isinstance(obj["b64f32"], str)
        or not isinstance(shape, list)
        or not all(type(n) is int and n >= 0 for n in shape)
    ):
        raise DecodeError(
            DlqReason.BAD_STATE, "state array needs b64f32: str and shape: [int >= 0]"
        )
    raw = b64decode(obj["b64f32"], DlqReason.BAD_STATE, "state array")
    if len(raw) != 4 * math.prod(shape):
        raise DecodeError(DlqReason.BAD_STATE, f"state array: {len(raw)} bytes for shape {shape}")
    # Reshaped before the copy: the copy is then the only array left (a view after it
    # kept a second array object, 112 bytes, for every user row the scorer holds).
    return np.frombuffer(raw, dtype=_F32).reshape(shape).astype(np.float32)


def split_embedding_key(key: bytes | None) -> tuple[Entity, str]:
    """`b"user:u7"` -> `("user", "u7")`; anything else raises `DecodeError` (bad_key).

    >>> split_embedding_key(b"item:i9")
    ('item', 'i9')
    """
    text = decode_key(key)
    prefix, sep, ident = text.partition(":")
    entity = _ENTITIES.get(prefix)
    if not sep or entity is None or not ident:
        raise DecodeError(
            DlqReason.BAD_KEY, f"embeddings key {text[:80]!r} is not user:<id> / item:<id>"
        )
    return entity, ident


def _validated(s: Schema, value: bytes) -> Any:
    obj = parse_object(value)
    _validate(s, obj)
    return obj


def _validate(s: Schema, obj: Any) -> None:
    try:
        s.validate(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise error_for(exc, s.name) from exc


def _dumps(obj: dict[str, Any], where: str) -> bytes:
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError as exc:
        raise EncodeError(f"{where}: {exc}") from exc
