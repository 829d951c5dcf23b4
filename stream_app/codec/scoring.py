"""Score requests and predictions (score-request.v1.json, prediction.v1.json).

Lower volume than events, so both are validated by the compiled schema only.
A bad request that still carries a usable `request_id` raises a `DecodeError`
with `.request_id` set, so the scorer can answer it with an error prediction
instead of leaving the client waiting.
"""

from __future__ import annotations

import math
from typing import Any

import fastjsonschema
import orjson

from stream_app.codec.exceptions import DecodeError, DlqReason, EncodeError
from stream_app.codec.fastcheck import fast_id
from stream_app.codec.schemas import error_for, schema
from stream_app.codec.wire import (
    MESSAGE_MAX_BYTES,
    check_key_matches,
    check_unique_keys,
    check_value,
    decode_key,
    id_str,
    ids_tuple,
    parse_object,
)
from stream_app.events import PredictedItem, Prediction, ScoreRequest

_REQUEST = schema("score-request")
_PREDICTION = schema("prediction")
_REQUEST_PROPS = _REQUEST.definition["properties"]
_EXCLUDE_SEEN_DEFAULT: bool = _REQUEST_PROPS["exclude_seen"]["default"]
_EXPLAIN_DEFAULT: bool = _REQUEST_PROPS["explain"]["default"]
_READY_DEFAULT: bool = _PREDICTION.definition["properties"]["ready"]["default"]


def decode_score_request(value: bytes | None, key: bytes | None) -> ScoreRequest:
    """Decode and validate a score request; its key must be the user id."""
    value = check_value(value, MESSAGE_MAX_BYTES)
    obj = parse_object(value)
    try:
        key_text = decode_key(key)
        check_unique_keys(value, obj)
        request = _request_of(obj)
        check_key_matches(key_text, request.user_id, "user_id")
    except DecodeError as err:
        err.request_id = fast_id(obj.get("request_id")) if isinstance(obj, dict) else None
        raise
    return request


def _request_of(obj: Any) -> ScoreRequest:
    """The request `obj` holds, checked as the scorer checks it; else `DecodeError`."""
    try:
        _REQUEST.validate(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise error_for(exc, _REQUEST.name) from exc
    return _build_request(obj)


def _build_request(obj: dict[str, Any]) -> ScoreRequest:
    candidates = obj.get("candidates")
    return ScoreRequest(
        request_id=id_str(obj["request_id"]),
        user_id=id_str(obj["user_id"]),
        k=int(obj["k"]),
        candidates=None if candidates is None else ids_tuple(candidates),
        exclude=ids_tuple(obj.get("exclude") or ()),  # null: as absent
        exclude_seen=_or_default(obj.get("exclude_seen"), _EXCLUDE_SEEN_DEFAULT),
        explain=_or_default(obj.get("explain"), _EXPLAIN_DEFAULT),
    )


def _or_default(value: bool | None, default: bool) -> bool:
    return default if value is None else value


def encode_score_request(request: ScoreRequest) -> bytes:
    """The JSON value of a request (its key is `request.user_id.encode()`).

    `EncodeError` for a request the scorer would refuse (k out of range, a bad id, too
    many candidates): the caller hears it now rather than in an error answer.
    """
    obj: dict[str, Any] = {"request_id": request.request_id, "user_id": request.user_id}
    obj["k"] = request.k
    if request.candidates is not None:
        obj["candidates"] = request.candidates
    if request.exclude:
        obj["exclude"] = request.exclude
    obj["exclude_seen"] = request.exclude_seen
    obj["explain"] = request.explain
    try:
        _request_of(obj)  # ids as the scorer reads them too (a float past 2**53 is none)
    except DecodeError as err:
        raise EncodeError(str(err), reason=err.reason) from err
    try:
        value = orjson.dumps(obj)
    except orjson.JSONEncodeError as exc:  # a lone surrogate in an id
        raise EncodeError(f"{DlqReason.BAD_UTF8}: {exc}", reason=DlqReason.BAD_UTF8) from exc
    if len(value) > MESSAGE_MAX_BYTES:
        raise EncodeError(f"{DlqReason.TOO_LARGE}: the value would be {len(value)} bytes, "
                          f"limit {MESSAGE_MAX_BYTES}", reason=DlqReason.TOO_LARGE)
    return value


def encode_prediction(prediction: Prediction) -> bytes:
    """The JSON value of a prediction (its key is `prediction.request_id.encode()`).

    Scores must be finite: orjson would silently write NaN as null.
    """
    items: list[dict[str, Any]] = []
    for item in prediction.items:
        if not math.isfinite(item.score):
            raise EncodeError(f"prediction {prediction.request_id!r}: score of {item.item_id!r}")
        entry: dict[str, Any] = {"item_id": item.item_id, "score": item.score}
        if item.because:
            entry["because"] = item.because
        items.append(entry)
    if not math.isfinite(prediction.latency_ms):
        raise EncodeError(f"prediction {prediction.request_id!r}: latency_ms must be finite")
    obj: dict[str, Any] = {
        "request_id": prediction.request_id,
        "user_id": prediction.user_id,
        "items": items,
        "model_version": prediction.model_version,
        "fallback": prediction.fallback,
        "latency_ms": prediction.latency_ms,
        "ready": prediction.ready,
    }
    if prediction.error is not None:
        obj["error"] = prediction.error
    if prediction.unknown_candidates is not None:
        obj["unknown_candidates"] = prediction.unknown_candidates
    return orjson.dumps(obj)


def decode_prediction(value: bytes | None) -> Prediction:
    """Decode and validate a prediction (clients, tests, the demo)."""
    obj = parse_object(check_value(value, MESSAGE_MAX_BYTES))
    try:
        _PREDICTION.validate(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise error_for(exc, _PREDICTION.name) from exc
    return Prediction(
        request_id=obj["request_id"],
        user_id=obj["user_id"],
        items=tuple(
            PredictedItem(
                item_id=i["item_id"], score=float(i["score"]), because=tuple(i.get("because", ()))
            )
            for i in obj["items"]
        ),
        model_version=obj["model_version"],
        fallback=obj["fallback"],
        latency_ms=float(obj["latency_ms"]),
        error=obj.get("error"),
        ready=obj.get("ready", _READY_DEFAULT),
        unknown_candidates=obj.get("unknown_candidates"),
    )
