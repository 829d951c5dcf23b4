"""Embedding rows and the trainer meta record on the compacted `embeddings` topic.

`embedding.v1.json`: the vector is base64 of little-endian float32, exactly
dim*4 bytes. Learner state arrays travel as {"b64f32", "shape"} so the trainer
restores its model bit-exactly from this topic (it is the model's changelog).
"""

from __future__ import annotations

from typing import Any

import fastjsonschema
import numpy as np
import orjson

from stream_app.codec.exceptions import DecodeError, DlqReason, EncodeError
from stream_app.codec.fastcheck import fast_row_vector
from stream_app.codec.schemas import Schema, error_for, schema
from stream_app.codec.state import ARRAY_KEYS, F32, decode_state, encode_state
from stream_app.codec.wire import (
    MESSAGE_MAX_BYTES,
    b64decode,
    b64encode,
    check_value,
    decode_key,
    intern_id,
    parse_object,
)
from stream_app.events import EmbeddingRow, Entity, RowBlock, state_rows

META_KEY = b"meta:trainer"
"""Key of the trainer's global-state record (trainer-meta.v1.json) on `embeddings`."""
_ENTITIES: dict[str, Entity] = {"user": "user", "item": "item"}
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
            if col.keys() == ARRAY_KEYS:
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
    raw = np.ascontiguousarray(arrays, dtype=F32).tobytes()
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
    vector = np.frombuffer(raw, dtype=F32).astype(np.float32)
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
        # Interned (`intern_id`): shared across user rows, in the scorer's table and
        # in a restore (BENCHMARKS.md, Restore).
        recent_items=tuple(map(intern_id, obj.get("recent_items", ()))),
        state=decode_state(obj.get("state", {})) if with_state else {},
    )


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
