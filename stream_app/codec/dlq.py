"""Dead-letter records (dlq-record.v1.json): never lose a bad record, never blow up on one.

`dlq_record` builds the record from a `DecodeError` and the Kafka coordinates,
cutting the raw bytes to a bound so a 1 MB poison value cannot make the DLQ
write fail. Encoding a DLQ record must not raise on odd input either.
"""

from __future__ import annotations

from typing import Any

import fastjsonschema
import orjson

from stream_app.codec.exceptions import (
    DETAIL_MAX_CHARS,
    DecodeError,
    DlqReason,
    bounded_detail,
)
from stream_app.codec.schemas import error_for, schema
from stream_app.codec.wire import (
    HEADERS_COPIED_MAX,
    MESSAGE_MAX_BYTES,
    b64decode,
    b64encode,
    check_value,
    copied_headers,
    parse_object,
)
from stream_app.events import Coordinates, DlqRecord, DlqStage, Headers

DLQ_BYTES_MAX = 64 * 1024
"""Raw key / value bytes kept in a DLQ record; the rest is cut (`value_truncated`)."""
_B64_MAX = 4 * ((DLQ_BYTES_MAX + 2) // 3)
DLQ_RECORD_MAX = (2 * _B64_MAX + 6 * (DETAIL_MAX_CHARS + 2 * 249) + 1024
                  + HEADERS_COPIED_MAX + 4096)
"""Most bytes a DLQ record takes as the broker counts it: the key's and the value's base64,
the detail and two topic names (each character escaped to six at worst), the other
fields, the copied headers, its Kafka key and the batch's framing. The trainer and
scorer check at start that `events-dlq` takes it: a DLQ record the topic refuses stopped
the scorer on its request at every restart, and aborted the trainer's batch for ever."""
_DLQ = schema("dlq-record")


def dlq_record(
    where: Coordinates,
    key: bytes | None,
    value: bytes | None,
    error: DecodeError,
    *,
    ts: int,
    stage: DlqStage = "decode",
    headers: Headers = (),
) -> DlqRecord:
    """The DLQ record for a record that failed with `error` (`ts`: now, wall-clock ms)."""
    return make_dlq_record(
        source_topic=where.topic, partition=where.partition, offset=where.offset,
        reason=error.reason, detail=error.detail, key=key, value=value, ts=ts, stage=stage,
        headers=headers,
    )  # fmt: skip


def make_dlq_record(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    reason: DlqReason,
    detail: str,
    key: bytes | None,
    value: bytes | None,
    ts: int,
    stage: DlqStage,
    headers: Headers = (),
) -> DlqRecord:
    """Build a bounded DLQ record from raw bytes (for failures outside the codec too).

    `headers`, the source record's, are cut as an answer's are (`copied_headers`).
    """
    size = 0 if value is None else len(value)
    return DlqRecord(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        reason=str(reason),
        detail=bounded_detail(detail),
        key=None if key is None else key[:DLQ_BYTES_MAX],
        value=None if value is None else value[:DLQ_BYTES_MAX],
        value_truncated=size > DLQ_BYTES_MAX,
        value_size=size,
        ts=ts,
        stage=stage,
        headers=copied_headers(headers),
    )


def dlq_key(record: DlqRecord) -> bytes:
    """The Kafka key of a DLQ record: `<source topic>:<partition>:<offset>`.

    The same from the trainer and the scorer; the original key is inside the
    value (`key_b64`).
    """
    return f"{record.source_topic}:{record.partition}:{record.offset}".encode()


def encode_dlq(record: DlqRecord) -> bytes:
    """The JSON value of a DLQ record (its Kafka key: `dlq_key`)."""
    value = record.value
    truncated = record.value_truncated
    if value is not None and len(value) > DLQ_BYTES_MAX:
        value, truncated = value[:DLQ_BYTES_MAX], True
    obj: dict[str, Any] = {
        "source_topic": record.source_topic,
        "partition": record.partition,
        "offset": record.offset,
        "reason": record.reason,
        "detail": record.detail[:DETAIL_MAX_CHARS],
        "value_b64": None if value is None else b64encode(value),
        "value_truncated": truncated,
        "value_size": max(record.value_size, 0 if value is None else len(value)),
        "ts": record.ts,
        "stage": record.stage,
    }
    if record.key is not None:
        obj["key_b64"] = b64encode(record.key[:DLQ_BYTES_MAX])
    return orjson.dumps(obj)


def decode_dlq(value: bytes | None) -> DlqRecord:
    """Decode and validate a DLQ record (replay tools, tests)."""
    obj = parse_object(check_value(value, MESSAGE_MAX_BYTES))
    try:
        _DLQ.validate(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise error_for(exc, _DLQ.name) from exc
    key_b64, value_b64 = obj.get("key_b64"), obj["value_b64"]
    return DlqRecord(
        source_topic=obj["source_topic"],
        partition=obj["partition"],
        offset=obj["offset"],
        reason=obj["reason"],
        detail=obj["detail"],
        key=None if key_b64 is None else b64decode(key_b64, DlqReason.SCHEMA, "key_b64"),
        value=None if value_b64 is None else b64decode(value_b64, DlqReason.SCHEMA, "value_b64"),
        value_truncated=obj["value_truncated"],
        value_size=obj["value_size"],
        ts=obj["ts"],
        stage=obj["stage"],
    )
