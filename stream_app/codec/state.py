"""Learner state on the wire: float32 arrays as {"b64f32", "shape"} objects, anywhere inside.

Rows and `meta:trainer` carry the learner's private state this way, so the
trainer restores its model bit-exactly from the `embeddings` changelog.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from stream_app.codec.exceptions import DecodeError, DlqReason, EncodeError
from stream_app.codec.schemas import schema
from stream_app.codec.wire import b64decode, b64encode
from stream_app.events import STATE_MAX_DEPTH

ARRAY_KEYS = frozenset({"b64f32", "shape"})
"""The keys of an encoded array; an object with exactly these keys is one."""
SCALARS = frozenset({int, float, str, bool, type(None)})
F32 = np.dtype("<f4")


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
        if state.keys() == ARRAY_KEYS:
            raise EncodeError(
                f"{where}: an object with exactly b64f32/shape is reserved for arrays"
            )
        return {str(k): encode_state(v, where) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        if state.dtype != np.float32:
            raise EncodeError(f"{where}: state arrays must be float32, got {state.dtype}")
        raw = np.ascontiguousarray(state, dtype=F32).tobytes()
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


def decode_state(obj: Any, depth: int = 0) -> Any:
    """Inverse of `encode_state`: {"b64f32", "shape"} objects become writable float32 arrays.

    Scalars are kept without a call each: a restore decodes every row's state.
    """
    kind = type(obj)
    if kind is dict or kind is list:
        if depth >= STATE_MAX_DEPTH:  # a row nested 500 deep stopped every scorer loading it
            raise DecodeError(DlqReason.BAD_STATE, f"state nested over {STATE_MAX_DEPTH} levels")
        if kind is list:
            return [v if type(v) in SCALARS else decode_state(v, depth + 1) for v in obj]
        if obj.keys() == ARRAY_KEYS:
            return _decode_array(obj)
        return {k: v if type(v) in SCALARS else decode_state(v, depth + 1)
                for k, v in obj.items()}
    return obj


def _decode_array(obj: dict[str, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    shape = obj["shape"]
    if not isinstance(obj["b64f32"], str) or not is_shape(shape):
        raise DecodeError(
            DlqReason.BAD_STATE, "state array needs b64f32: str and shape: [int >= 0]"
        )
    raw = b64decode(obj["b64f32"], DlqReason.BAD_STATE, "state array")
    if len(raw) != 4 * math.prod(shape):
        raise DecodeError(DlqReason.BAD_STATE, f"state array: {len(raw)} bytes for shape {shape}")
    # Reshaped before the copy: the copy is then the only array left (a view after it
    # kept a second array object, 112 bytes, for every user row the scorer holds).
    try:
        return np.frombuffer(raw, dtype=F32).reshape(shape).astype(np.float32)
    except ValueError as exc:  # in the schema's bounds, but not a shape numpy makes
        raise DecodeError(DlqReason.BAD_STATE, f"state array of shape {shape}: {exc}") from exc


_SHAPE = schema("embedding").subschema("f32array")["properties"]["shape"]
SHAPE_MAX_DIMS: int = _SHAPE["maxItems"]
SHAPE_DIM_MAX: int = _SHAPE["items"]["maximum"]
"""The schema's bounds on a state array's shape: numpy refused [2**63, 0] (an empty
array, so its bytes matched) and 70 dimensions, with errors no reader caught."""


def is_shape(shape: Any) -> bool:
    """True for a list of at most SHAPE_MAX_DIMS ints in [0, SHAPE_DIM_MAX] (3.0 and True
    are not: they compare equal to 3 and 1).

    >>> is_shape([4]), is_shape([2**63, 0]), is_shape([1] * 9), is_shape([True])
    (True, False, False, False)
    """
    return type(shape) is list and len(shape) <= SHAPE_MAX_DIMS \
        and all(type(n) is int and 0 <= n <= SHAPE_DIM_MAX for n in shape)


def array_column(values: list[dict[str, Any]]) -> np.ndarray[Any, np.dtype[np.float32]] | None:
    """Encoded arrays of one shape as one (n, *shape) array; None unless every one is valid.

    None leaves the caller to decode each row's array alone (`decode_state`),
    which raises that row's own reason.
    """
    shape = values[0]["shape"]
    parts = [v["b64f32"] for v in values]
    if not is_shape(shape) or not all(type(p) is str for p in parts) \
            or not all(is_shape(v["shape"]) and v["shape"] == shape for v in values):
        return None
    raws = [b64decode(p, DlqReason.BAD_STATE, "state array") for p in parts]
    size = 4 * math.prod(shape)
    if not all(len(r) == size for r in raws):
        return None
    return np.frombuffer(bytearray().join(raws), dtype=F32).reshape(len(values), *shape)
