"""Turn one polled micro-batch into learner input, and learner output into records.

Pure functions: no Kafka client, no clock (the caller passes `now_ms`), so the
trainer loop reads as wiring and these rules are unit-tested on their own.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from stream_app.codec import (
    META_KEY,
    DecodeError,
    DlqReason,
    decode_event,
    decode_id_key,
    decoder_bug,
    dlq_key,
    dlq_record,
    encode_dlq,
    encode_meta,
    encode_rows,
)
from stream_app.codec.fastcheck import fast_id, fast_int
from stream_app.codec.wire import check_unique_keys, shown
from stream_app.config import TopicNames
from stream_app.events import DlqRecord, Event, EventKind, RowBlock
from stream_app.kafka.partitioners import routed_by_a_known_partitioner
from stream_app.kafka.records import RawRecord
from stream_app.kafka.transaction import OutRecord
from stream_app.observability.metrics import EventOutcome

log = logging.getLogger(__name__)

CONTROL_HEADER = "stream-app-control"
"""Header of control records on the event topics; value `forget` deletes the key's user.

They travel on the user's own partition, so a forget is ordered after every
earlier event of that user and is applied in the same transaction as them.
"""


def event_time(rec: RawRecord) -> int:
    """The record's event time `ts`, the key that orders partitions in the consumer.

    Only an order key, never validated here: a record without a readable
    integer `ts` (a control record, bad input bound for the DLQ) sorts first,
    which moves it ahead of other partitions' records, never within its own.
    An integral float is an integer, as the event schema (and decoding) says.

    >>> event_time(RawRecord("clicks", 0, 7, b"u1", b'{"ts": 42}', 0))
    42
    >>> event_time(RawRecord("clicks", 0, 7, b"u1", b'{"ts": 42.0}', 0))
    42
    >>> event_time(RawRecord("clicks", 0, 8, b"u1", b"not json", 0))
    -1
    """
    try:
        ts = orjson.loads(rec.value or b"").get("ts")
    except (orjson.JSONDecodeError, AttributeError):
        return -1
    as_int = fast_int(ts, 0, math.inf)
    return -1 if as_int is None else as_int


def forget_request(rec: RawRecord) -> tuple[bytes | None, str] | None:
    """(user key, request id) of a forget request that `stream-app forget` sent, else None.

    The consumer aligns the request's two records, one per event topic, on it
    (`event_time`'s barriers). A forget record without a request id (written by
    hand) is applied where each topic has it.

    >>> forget = ((CONTROL_HEADER, b"forget"),)
    >>> forget_request(RawRecord("clicks", 0, 7, b"u1", b'{"request_id": "r9"}', 0, forget))
    (b'u1', 'r9')
    >>> forget_request(RawRecord("clicks", 0, 7, b"u1", b'{"type": "forget"}', 0, forget))
    >>> forget_request(RawRecord("clicks", 0, 8, b"u1", b'{"request_id": "r9"}', 0))
    """
    if not rec.headers or rec.header(CONTROL_HEADER) != b"forget":  # asked of every record
        return None
    try:
        request = orjson.loads(rec.value or b"").get("request_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return (rec.key, request) if isinstance(request, str) and request else None


def forget_user(control: bytes | None, key: bytes | None) -> str:
    """The user a record with the control header asks to forget.

    Any other value of the header went on to be decoded as an event: a forget sent
    as "Forget" was learned, or dead-lettered as a click missing its fields, and
    erased nothing (review of the DLQ path). A key error says it was a forget.

    >>> forget_user(b"forget", b"u1")
    'u1'
    >>> forget_user(b"Forget", b"u1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    stream_app.codec.exceptions.DecodeError: schema: ...'Forget'... erases nothing
    """
    if control != b"forget":
        shown_value = "null" if control is None else repr(control[:64])
        raise DecodeError(DlqReason.SCHEMA, f"unknown value {shown_value} of the header "
                          f"{CONTROL_HEADER} (only b'forget' is known, in lower case): the "
                          "record is not learned, and erases nothing")
    try:
        return decode_id_key(key)
    except DecodeError as err:
        raise DecodeError(err.reason, f"forget request: {err.detail}") from err


def check_forget_value(value: bytes | None, user: str) -> str | None:
    """A forget record's value must say it is one, and name the key's user if it names one;
    returns its request id (None without one), parsed once with the check.

    The header alone decided: a click sent with it by mistake erased its user and was
    not learned, and a value naming another user than the key was ignored (contract
    review). Either goes to the DLQ now; `{"type": "forget"}` written by hand is enough.

    >>> check_forget_value(b'{"type": "forget", "user_id": 42}', "42")
    >>> check_forget_value(b'{"type": "forget", "request_id": "r9"}', "u1")
    'r9'
    >>> check_forget_value(b'{"type": "forget", "user_id": "u1", "user_id": "u2"}', "u2")
    Traceback (most recent call last):
    stream_app.codec.exceptions.DecodeError: duplicate_key: an object names key 'user_id' twice
    >>> check_forget_value(b'{"event_id": "e1", "user_id": "u1"}', "u1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    stream_app.codec.exceptions.DecodeError: schema: ... not a forget request, and erases nothing
    """
    if not value:
        raise DecodeError(DlqReason.MISSING_VALUE, 'forget request: no value; it must be '
                          '{"type": "forget", "user_id": <its key>}')
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(DlqReason.NOT_JSON, f"forget request: {exc}") from exc
    # A repeated key hides what was meant: {"user_id": "u1", ..., "user_id": "u2"} keyed
    # u2 passed the key check below, and an erasure cannot be undone.
    check_unique_keys(value, obj)
    if not isinstance(obj, dict) or obj.get("type") != "forget":
        raise DecodeError(DlqReason.SCHEMA, "a record with the header stream-app-control: "
                          'forget must have the value {"type": "forget", "user_id": <its key>}; '
                          "this one is not a forget request, and erases nothing")
    named = obj.get("user_id")
    if named is not None and fast_id(named) != user:
        raise DecodeError(DlqReason.KEY_MISMATCH, f"forget request for user_id {shown(named)} "
                          f"keyed {user!r}: the key is the user forgotten; nothing erased")
    request = obj.get("request_id")
    return request if isinstance(request, str) and request else None  # as `forget_request`


def order_key(rec: RawRecord, now_ms: int, max_future_ms: int) -> int:
    """`event_time`, but no later than `now_ms` (the wall clock); and past `now_ms +
    max_future_ms` (`trainer.max_future_ms`, so decoding dead-letters the record): -1,
    first, like other bad input.

    Ordered by its own `ts`, a record from a clock ahead held back every later record of
    its partition until the other partitions' events caught up with it: a clock years off
    (microseconds for milliseconds) through a backlog, until they all ran dry, and one a
    day ahead for that day of live traffic (consumer review). As now, it goes out with
    what is being written now.

    >>> rec = RawRecord("clicks", 0, 7, b"u1", b'{"ts": 42}', 0)
    >>> order_key(rec, 100, 0), order_key(rec, 30, 20), order_key(rec, 30, 5)
    (42, 30, -1)
    """
    ts = event_time(rec)
    return -1 if ts > now_ms + max_future_ms else min(ts, now_ms)


@dataclass(slots=True)
class Decoded:
    """A micro-batch split into segments of events, separated by forget requests.

    `segments[i]` is learned before `forgets[i]` is applied; `records[i]` holds
    the raw record of each event in `segments[i]` (same order) for dead-lettering.
    `forget_requests[i]` is the request id of `forgets[i]` (None if it has none):
    one request has a record on each event topic, and is counted once.
    """

    segments: list[list[Event]] = field(default_factory=lambda: [[]])
    records: list[list[RawRecord]] = field(default_factory=lambda: [[]])
    forgets: list[str] = field(default_factory=list)
    forget_requests: list[str | None] = field(default_factory=list)
    forget_records: list[RawRecord] = field(default_factory=list)
    dlq: list[DlqRecord] = field(default_factory=list)

    def users(self) -> set[str]:
        """Users with an event or a forget request in the batch."""
        return {e.user_id for events in self.segments for e in events} | set(self.forgets)


def decode_batch(batch: Sequence[RawRecord], topics: TopicNames, *, now_ms: int,
                 max_future_ms: int) -> Decoded:
    """Decode and validate; bad records become DLQ records with their coordinates."""
    kinds = {topics.clicks: EventKind.CLICK, topics.purchases: EventKind.PURCHASE}
    out = Decoded()
    for rec in batch:
        try:
            if rec.headers and any(k == CONTROL_HEADER for k, _ in rec.headers):
                user = forget_user(rec.header(CONTROL_HEADER), rec.key)  # the key's user
                out.forget_requests.append(check_forget_value(rec.value, user))
                out.forgets.append(user)
                out.forget_records.append(rec)
                out.segments.append([])
                out.records.append([])
                continue
            event = decode_event(rec.value, rec.key, kinds[rec.topic])
            if event.ts > now_ms + max_future_ms:
                raise DecodeError(DlqReason.BAD_TIMESTAMP,
                                  f"ts={event.ts} is {(event.ts - now_ms) / 1000:.0f}s in the "
                                  "future (over trainer.max_future_ms)")
        except DecodeError as err:
            out.dlq.append(dlq_record(rec.coords, rec.key, rec.value, err, ts=now_ms,
                                      headers=rec.headers))
            continue
        except Exception as exc:  # noqa: BLE001 (a bug of ours must not stop the trainer
            # on this record at every restart; the record stays in the DLQ to replay)
            log.exception("decoding %s[%d]@%d raised: dead-lettered as decoder_error",
                          rec.topic, rec.partition, rec.offset)
            out.dlq.append(dlq_record(rec.coords, rec.key, rec.value, decoder_bug(exc),
                                      ts=now_ms, headers=rec.headers))
            continue
        out.segments[-1].append(event)
        out.records[-1].append(rec)
    return out


def misrouted(decoded: Decoded, partitions: Mapping[str, int]) -> list[RawRecord]:
    """The decoded events' and forget requests' records on a partition where neither
    common partitioner puts their key (`kafka.partitioners`); none of a topic whose count
    is not known yet."""
    return [rec for recs in (*decoded.records, decoded.forget_records) for rec in recs
            if rec.key and rec.topic in partitions
            and not routed_by_a_known_partitioner(rec.key, rec.partition, partitions[rec.topic])]


@dataclass(frozen=True, slots=True)
class Step:
    """Events `start:end` of one segment, learned as one step; `evaluate`: scored first."""

    start: int
    end: int
    evaluate: bool


def plan_steps(segment_sizes: Sequence[int], *, step_max: int, eval_max: int) -> list[list[Step]]:
    """Each segment's steps, in order, and which to evaluate.

    A segment is cut into the fewest steps of at most `step_max` events, all
    of about the same size: 2,001 events make steps of 1,000 and 1,001, not
    2,000 and a 1-event step learned on its own.

    Steps are evaluated in order until the batch has `eval_max` evaluated
    events; the rest are learned unscored. Evaluating every step cost a third
    of the trainer's time, and a step is evaluated whole (as a one-step batch
    was: an evenly spaced subset of up to `eval_max` events) rather than
    sampled thinner, because HitRate@K is per user (any target in the top K)
    and so grows with the number of a user's events scored together: a thin
    sample of every step halved it for the same model.

    >>> plan = plan_steps([5, 0, 3], step_max=2, eval_max=3)
    >>> [[(s.start, s.end, s.evaluate) for s in steps] for steps in plan]
    [[(0, 1, True), (1, 3, True), (3, 5, False)], [], [(0, 1, False), (1, 3, False)]]
    """
    evaluated = 0
    plan: list[list[Step]] = []
    for size in segment_sizes:
        n = -(-size // step_max)  # as few steps as fit, of sizes within one of each other
        steps = []
        for k in range(n):
            start, end = size * k // n, size * (k + 1) // n
            scored = evaluated < eval_max
            if scored:
                evaluated += min(end - start, eval_max)
            steps.append(Step(start, end, scored))
        plan.append(steps)
    return plan


def train_dlq(rec: RawRecord, reason: DlqReason, detail: str, now_ms: int) -> DlqRecord:
    """A DLQ record for an event the learner refused (rate-limited, non-finite loss)."""
    return dlq_record(rec.coords, rec.key, rec.value, DecodeError(reason, detail),
                      ts=now_ms, stage="train", headers=rec.headers)


def tombstones_to_publish(tombstones: Iterable[str], *, users: set[str],
                          items: set[str]) -> list[str]:
    """The tombstones a transaction must publish: once each, none for a key that has a row.

    A user forgotten (or a row evicted) and then seen again in the same
    transaction ends it with a row. Rows go out before tombstones, and
    compaction keeps a key's last record, so that row's tombstone would
    delete it from the changelog while the model still has it.

    >>> tombstones_to_publish(["user:a", "item:x", "user:b", "user:a"], users={"b"}, items=set())
    ['user:a', 'item:x']
    """
    live = {f"user:{u}" for u in users} | {f"item:{i}" for i in items}
    return [key for key in dict.fromkeys(tombstones) if key not in live]


OUTCOMES = {"applied": EventOutcome.APPLIED, "duplicate": EventOutcome.DUPLICATE,
            "rate_limited": EventOutcome.RATE_LIMITED}
"""The learner's event outcomes as metric labels; any other outcome is a dead letter."""

REFUSED = {
    "rate_limited": (DlqReason.RATE_LIMITED, "user over learner.rate_cap_events in its window"),
    "far_ahead": (DlqReason.BAD_TIMESTAMP, "ts over learner.max_time_jump_ms ahead of the "
                  "rest of its step and of the model's clock; not applied"),
    "id_reused": (DlqReason.EVENT_ID_REUSED, "event_id of an applied event whose user, item, "
                  "time, kind or purchase fields differ; not applied"),
    "non_finite": (DlqReason.NON_FINITE_LOSS, "loss or gradient not finite; batch not applied"),
}
"""The learner's outcomes that dead-letter an event: reason and detail."""


@dataclass(slots=True)
class TxnCounts:
    """What one transaction counts, added to the metrics once it commits: an aborted
    batch is read and learned again, and would be counted twice."""

    events: Counter[tuple[str, EventOutcome]] = field(default_factory=Counter)
    admissions: Counter[str] = field(default_factory=Counter)
    evictions: Counter[str] = field(default_factory=Counter)
    forgets: int = 0
    """Forget requests applied (each publishes its user's tombstone)."""
    forget_requests: set[tuple[str, str]] = field(default_factory=set)
    """(user, request id) of the requests counted in `forgets` (`CountedRequests`)."""
    applied_times: list[tuple[int, int]] = field(default_factory=list)
    """(event time, produce time) in ms of each applied event: their freshness."""
    losses: list[tuple[float, int]] = field(default_factory=list)
    """(step loss, events applied) of each step that applied any."""


def own_users_only(own: set[str], changed_users: set[str], tombstones: list[str]) -> list[str]:
    """Keep only `own` users in what a transaction publishes: `changed_users` is narrowed
    in place, and the tombstones left are returned (item tombstones all stay).

    >>> users = {"a", "b"}
    >>> own_users_only({"a"}, users, ["user:a", "user:b", "item:x"]), users
    (['user:a', 'item:x'], {'a'})
    """
    changed_users &= own
    return [t for t in tombstones if not t.startswith("user:") or t[5:] in own]


def tombstoned_users(tombstones: Iterable[str]) -> Iterator[str]:
    """The user ids among embeddings tombstone keys.

    >>> list(tombstoned_users(["user:a", "item:b"]))
    ['a']
    """
    return (t[5:] for t in tombstones if t.startswith("user:"))


def leave_scope(own: set[str], tombstones: Iterable[str]) -> None:
    """Drop from `own` the users whose tombstone committed: they hold no row, and their
    next event brings them back into the set. Without it the set grew with every
    user seen, rows evicted or not, until the next assignment.

    >>> own = {"a", "b"}
    >>> leave_scope(own, ["user:a", "item:b"]); own
    {'b'}
    """
    own.difference_update(tombstoned_users(tombstones))


def output_records(topics: TopicNames, blocks: Iterable[RowBlock],
                   tombstones: Iterable[str], meta: dict[str, object],
                   dlq: Iterable[DlqRecord]) -> list[OutRecord]:
    """Everything one transaction publishes: rows, tombstones, the meta row, DLQ records.

    `tombstones` are embeddings keys (`user:<id>` / `item:<id>`).
    """
    out = [OutRecord(topics.embeddings, f"{block.entity}:{ident}".encode(), value)
           for block in blocks for ident, value in zip(block.ids, encode_rows(block))]
    out += [OutRecord(topics.embeddings, key.encode(), None) for key in tombstones]
    out.append(OutRecord(topics.embeddings, META_KEY, encode_meta(meta)))
    out += [OutRecord(topics.dlq, dlq_key(d), encode_dlq(d), d.headers) for d in dlq]
    return out
