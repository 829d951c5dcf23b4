"""Why a record was refused, and the errors the codec raises.

Every library error met while decoding (orjson, fastjsonschema, base64,
UTF-8) is re-raised as `DecodeError` with the most specific `DlqReason`, so the
loop has exactly one thing to catch and the DLQ can be counted by reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

DETAIL_MAX_CHARS = 1024
"""`detail` is cut to this length: it may quote producer-controlled field names."""


class DlqReason(StrEnum):
    """Bounded set of dead-letter reasons (a metric label, so never free text)."""

    # Before parsing.
    MISSING_VALUE = "missing_value"  # null value (tombstone) or empty bytes on an input topic
    TOO_LARGE = "too_large"  # value over the size bound; checked before parsing
    MISSING_KEY = "missing_key"  # the Kafka key is absent or empty
    BAD_UTF8 = "bad_utf8"  # key or value is not valid UTF-8
    # Parsing.
    NOT_JSON = "not_json"  # not parseable JSON (truncated, garbage...)
    NON_FINITE = "non_finite"  # NaN / Infinity / a number that overflows a double
    DUPLICATE_KEY = "duplicate_key"  # an object names a key twice (inputs only)
    NOT_OBJECT = "not_object"  # valid JSON but not an object (array, number, null...)
    # Schema.
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"  # additionalProperties: false
    WRONG_TOPIC = "wrong_topic"  # a purchase-only field (quantity/price) on the clicks topic
    WRONG_TYPE = "wrong_type"
    EMPTY_ID = "empty_id"
    ID_TOO_LONG = "id_too_long"  # over 256 characters, or an integer id out of int64
    BAD_ID_CHARS = "bad_id_chars"  # control characters / separators in an id
    BAD_TIMESTAMP = "bad_timestamp"  # not an integer, before 1973 (seconds?), or not before 3000
    OUT_OF_RANGE = "out_of_range"  # any other minimum / maximum (quantity, price, dim...)
    BAD_K = "bad_k"
    TOO_MANY_CANDIDATES = "too_many_candidates"
    TOO_MANY_EXCLUSIONS = "too_many_exclusions"
    SCHEMA = "schema"  # any other schema rule; `detail` names the field
    # After the schema.
    KEY_MISMATCH = "key_mismatch"  # key differs from the id it must carry
    BAD_KEY = "bad_key"  # embeddings key not `user:<id>` / `item:<id>`
    BAD_VECTOR = "bad_vector"  # bad base64, wrong byte length for dim, non-finite values
    BAD_STATE = "bad_state"  # a {"b64f32", "shape"} state array that does not decode
    DECODER_ERROR = "decoder_error"  # our decoder raised something else: a bug, not the input
    # Later stages (set by the trainer / scorer, not by the codec).
    EVENT_ID_REUSED = "event_id_reused"  # an applied event's id on an event that says otherwise
    RATE_LIMITED = "rate_limited"
    NON_FINITE_LOSS = "non_finite_loss"
    NON_FINITE_SCORE = "non_finite_score"  # a score overflowed (rows too large for float32)
    ANSWER_TOO_LARGE = "answer_too_large"  # the prediction would exceed ANSWER_MAX_BYTES
    RANK_ERROR = "rank_error"  # ranking this request alone raised: a bug, not the request


def bounded_detail(detail: str) -> str:
    """`detail` within DETAIL_MAX_CHARS, saying how much was cut: a detail that ended
    mid-word (200 unknown fields) read as the whole of it.

    >>> bounded_detail("ab"), len(bounded_detail("x" * 5000))
    ('ab', 1024)
    >>> bounded_detail("x" * 5000)[-27:]
    '... (4,003 more characters)'
    """
    if len(detail) <= DETAIL_MAX_CHARS:
        return detail
    keep = DETAIL_MAX_CHARS - len(f"... ({len(detail):,} more characters)")  # at most as long
    return f"{detail[:keep]}... ({len(detail) - keep:,} more characters)"


class DecodeError(Exception):
    """A record cannot be used; `.reason` is its DLQ reason, `.detail` says where.

    `request_id` is set by `decode_score_request` when the request was bad but
    still carried a usable request id, so the scorer can answer with an error.
    """

    def __init__(self, reason: DlqReason, detail: str, *, request_id: str | None = None) -> None:
        self.reason = reason
        self.detail = bounded_detail(detail)
        self.request_id = request_id
        super().__init__(f"{reason}: {self.detail}")


def decoder_bug(exc: Exception, reason: DlqReason = DlqReason.DECODER_ERROR, *,
                request_id: str | None = None) -> DecodeError:
    """What a process dead-letters when decoding (or `reason`: ranking) a record raised
    something else than DecodeError: a bug of ours that this record meets. Raised on, it
    stopped the process, and again on the same record, never committed, at every restart.

    >>> decoder_bug(RecursionError("too deep")).detail
    'RecursionError: too deep'
    >>> decoder_bug(ValueError("bad \\udc80 byte")).detail  # JSON cannot hold a lone surrogate
    'ValueError: bad ? byte'
    """
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - its __str__ is as likely to hold the bug
        text = "(its message cannot be shown)"
    # The detail goes into a DLQ record and an error answer: what orjson cannot write
    # would raise there, on the same record, at every restart.
    text = text[:DETAIL_MAX_CHARS].encode("utf-8", "replace").decode("utf-8")
    return DecodeError(reason, f"{type(exc).__name__}: {text}", request_id=request_id)


class BugRun:
    """Counts records in a row that met a bug of ours (`decoder_bug`); `count` raises
    RuntimeError at `limit`, before the caller commits them. One such record is dead-
    lettered and the process goes on; a run of them is a broken build (or a dead
    device), which would otherwise drain the input into the DLQ, offsets committed.

    >>> run = BugRun(3, "requests", "rank_error")
    >>> run.count([True, True, False, True, True])
    >>> try:
    ...     run.count([True])
    ... except RuntimeError as exc:
    ...     print(str(exc)[:52])
    3 requests in a row met a bug in this build (rank_er
    """

    def __init__(self, limit: int, what: str, reasons: str) -> None:
        self.limit, self.what, self.reasons = limit, what, reasons
        self.run = 0

    def count(self, bugs: Iterable[bool]) -> None:
        for bug in bugs:
            self.run = self.run + 1 if bug else 0
            if self.run >= self.limit:
                raise RuntimeError(
                    f"{self.run} {self.what} in a row met a bug in this build ({self.reasons}, "
                    "tracebacks above), not bad input; stopping without committing them, so "
                    "that a fixed build reads them again")


class EncodeError(ValueError):
    """Our own code tried to publish a value the schema would refuse (a bug, not bad input).

    `reason` is the DLQ reason a reader would give the value, where one applies, so a
    caller that encodes what a file said can report the line as bad input.
    """

    def __init__(self, message: str, *, reason: DlqReason | None = None) -> None:
        self.reason = reason
        super().__init__(message)


class SchemaError(Exception):
    """A schema file is missing, does not compile, or its examples fail: fail at start-up."""
