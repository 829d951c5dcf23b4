"""Message contract: JSON values <-> frozen `stream_app.events` types, validated by schemas/.

Importing this package compiles every `schemas/*.v1.json` and checks each
schema's own examples, so a broken schema fails before the first poll. Decoders
raise only `DecodeError` (with a `DlqReason`); encoders raise `EncodeError`
when our own code would publish something the schema refuses.

>>> from stream_app.events import EventKind
>>> decode_event(b'{"event_id":"e1","user_id":7,"item_id":"i9","ts":1700000000001}', b"7",
...              EventKind.CLICK).user_id
'7'
>>> try:
...     decode_event(b'{"event_id":"e1","user_id":"","item_id":"i9","ts":1700000000001}', b"x",
...                  EventKind.CLICK)
... except DecodeError as err:
...     err.reason
<DlqReason.EMPTY_ID: 'empty_id'>
"""

from __future__ import annotations

from stream_app.codec.changelog import decode_changelog_rows
from stream_app.codec.dlq import (
    DLQ_BYTES_MAX,
    DLQ_RECORD_MAX,
    decode_dlq,
    dlq_key,
    dlq_record,
    encode_dlq,
    make_dlq_record,
)
from stream_app.codec.embeddings import (
    META_KEY,
    decode_embedding,
    decode_meta,
    encode_embedding,
    encode_meta,
    encode_rows,
    is_meta_key,
    split_embedding_key,
)
from stream_app.codec.events import (
    decode_event,
    decode_id_key,
    encode_event,
    event_key,
    parse_event,
)
from stream_app.codec.exceptions import (
    BugRun,
    DecodeError,
    DlqReason,
    EncodeError,
    SchemaError,
    decoder_bug,
)
from stream_app.codec.schemas import SCHEMA_DIR, Schema, load_schemas
from stream_app.codec.scoring import (
    decode_prediction,
    decode_score_request,
    encode_prediction,
    encode_score_request,
)
from stream_app.codec.wire import (
    EVENT_MAX_BYTES,
    HEADERS_COPIED_MAX,
    MESSAGE_MAX_BYTES,
    copied_headers,
)

__all__ = [
    "decode_id_key",
    "DLQ_BYTES_MAX",
    "DLQ_RECORD_MAX",
    "EVENT_MAX_BYTES",
    "HEADERS_COPIED_MAX",
    "MESSAGE_MAX_BYTES",
    "META_KEY",
    "SCHEMA_DIR",
    "BugRun",
    "DecodeError",
    "decoder_bug",
    "DlqReason",
    "EncodeError",
    "Schema",
    "SchemaError",
    "copied_headers",
    "decode_changelog_rows",
    "decode_dlq",
    "decode_embedding",
    "decode_event",
    "decode_meta",
    "decode_prediction",
    "decode_score_request",
    "dlq_key",
    "dlq_record",
    "encode_dlq",
    "encode_embedding",
    "encode_rows",
    "encode_event",
    "encode_meta",
    "encode_prediction",
    "encode_score_request",
    "event_key",
    "is_meta_key",
    "load_schemas",
    "make_dlq_record",
    "parse_event",
    "split_embedding_key",
]
