"""Group consumption in micro-batches, and reading a topic to its end.

Only this module turns `confluent_kafka.Message` into our frozen `RawRecord`,
which keeps the record's coordinates so a bad one can be dead-lettered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as _TP

from stream_app.config import KafkaConfig
from stream_app.events import Coordinates
from stream_app.kafka.clients import make_consumer
from stream_app.kafka.exceptions import KafkaEdgeError

log = logging.getLogger(__name__)

Partition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One consumed record, detached from librdkafka. `timestamp_ms` is the produce time."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def coords(self) -> Coordinates:
        return Coordinates(topic=self.topic, partition=self.partition, offset=self.offset)

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


def to_record(msg: Message) -> RawRecord:
    ts_type, ts = msg.timestamp()
    return RawRecord(topic=msg.topic() or "", partition=msg.partition() or 0,
                     offset=msg.offset() or 0, key=msg.key(), value=msg.value(),
                     timestamp_ms=ts if ts_type else 0,
                     headers=tuple((str(h[0]), _bytes(h[1])) for h in (msg.headers() or ())))


def _bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode()


def next_offsets(records: Sequence[RawRecord]) -> dict[Partition, int]:
    """Per partition, the offset to commit after these records (last offset + 1)."""
    out: dict[Partition, int] = {}
    for r in records:
        key = (r.topic, r.partition)
        out[key] = max(out.get(key, 0), r.offset + 1)
    return out


class GroupConsumer:
    """A consumer group member that hands out micro-batches bounded by count and wait.

    Rebalance safety: records of partitions revoked while a batch is being
    gathered are dropped from it (they were neither applied nor committed, so
    the new owner reads them from the committed offset).
    """

    def __init__(self, kafka: KafkaConfig, *, client_id: str, group_id: str,
                 topics: Sequence[str],
                 on_assign: Callable[[list[Partition]], None] | None = None,
                 on_revoke: Callable[[list[Partition]], None] | None = None,
                 co_partitioned: bool = False) -> None:
        # co_partitioned: partition i of every topic goes to the same member
        # (the range assignor; rebalances are eager). The trainer needs it: a
        # user's clicks and purchases share the partition number, and its row
        # must be learned by one trainer only.
        enforce = {"partition.assignment.strategy": "range"} if co_partitioned else None
        self._consumer: Consumer = make_consumer(kafka, client_id, group_id, enforce=enforce)
        self._kafka, self._client_id = kafka, client_id
        self._revoked: set[Partition] = set()
        self._assigned: set[Partition] = set()
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._consumer.subscribe(list(topics), on_assign=self._assign, on_revoke=self._revoke,
                                 on_lost=self._revoke)

    @property
    def raw(self) -> Consumer:
        """The librdkafka consumer, for the transaction function only."""
        return self._consumer

    @property
    def assignment(self) -> set[Partition]:
        return set(self._assigned)

    def _assign(self, _c: Consumer, parts: list[_TP]) -> None:
        got = [(tp.topic, tp.partition) for tp in parts]
        self._assigned.update(got)
        log.info("assigned partitions=%s", got)
        if self._on_assign:
            self._on_assign(got)

    def _revoke(self, _c: Consumer, parts: list[_TP]) -> None:
        gone = [(tp.topic, tp.partition) for tp in parts]
        self._assigned.difference_update(gone)
        self._revoked.update(gone)
        log.info("revoked partitions=%s", gone)
        if self._on_revoke:
            self._on_revoke(gone)

    def poll_batch(self, max_records: int, max_wait_s: float) -> list[RawRecord]:
        """Up to `max_records` records, waiting at most `max_wait_s` for them."""
        batch: list[RawRecord] = []
        deadline = time.monotonic() + max_wait_s
        while len(batch) < max_records:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._revoked.clear()
            msgs = self._consumer.consume(max_records - len(batch), timeout=min(left, 0.1))
            if self._revoked:
                # A rebalance ran inside consume(): records gathered before it of
                # a revoked partition are dropped, even when the partition came
                # straight back (eager rebalance): its position went back to the
                # committed offset, so they will be read again. librdkafka drops
                # their fetched-but-undelivered records itself.
                batch = [r for r in batch if (r.topic, r.partition) not in self._revoked]
            for msg in msgs:
                err = msg.error()
                if err is None:
                    batch.append(to_record(msg))
                elif err.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001
                    _raise_if_fatal(err)
        return batch

    def end_offsets(self, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
        """True end (high watermark) of every partition of `topic`; see `high_watermarks`."""
        return high_watermarks(self._kafka, topic, client_id=self._client_id,
                               timeout_s=timeout_s)

    def lag(self) -> dict[Partition, int]:
        """Messages behind the high watermark per assigned partition (from cached stats)."""
        out: dict[Partition, int] = {}
        parts = [_TP(t, p) for t, p in self._assigned]
        if not parts:
            return out
        for tp in self._consumer.position(parts):
            low, high = self._consumer.get_watermark_offsets(tp, cached=True) or (-1, -1)
            # Before the first fetch the position is invalid: count from the low
            # watermark, so a fresh backlog shows as lag instead of vanishing.
            start = tp.offset if tp.offset >= 0 else low
            if start >= 0 and high >= 0:
                out[(tp.topic, tp.partition)] = max(0, high - start)
        return out

    def close(self) -> None:
        self._consumer.close()


def _raise_if_fatal(err: KafkaError) -> None:
    if err.fatal():
        raise KafkaEdgeError(f"consumer failed fatally: {err.str()}")
    log.warning("consumer error code=%s reason=%s", err.name(), err.str())


def end_offsets(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """High watermark of every partition of `topic`, asked of the broker."""
    meta = consumer.list_topics(topic, timeout=timeout_s)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        raise KafkaEdgeError(f"topic {topic} does not exist")
    return {p: consumer.get_watermark_offsets(_TP(topic, p), timeout=timeout_s)[1]
            for p in sorted(meta.topics[topic].partitions)}


def high_watermarks(kafka: KafkaConfig, topic: str, *, client_id: str,
                    timeout_s: float = 10.0) -> dict[int, int]:
    """The true end of each partition, asked with isolation.level=read_uncommitted.

    A read_committed consumer's watermark query answers the last stable offset:
    it stops at another producer's open transaction (a killed trainer's, until
    `transaction.timeout.ms` aborts it) and so hides every committed record
    after it. Restoring up to that point would lose those records.
    """
    consumer = make_consumer(kafka, client_id, f"{client_id}-hwm", read_committed=False)
    try:
        return end_offsets(consumer, topic, timeout_s)
    finally:
        consumer.close()


def read_to_end(kafka: KafkaConfig, topic: str, *, client_id: str,
                batch: int = 5000, timeout_s: float = 600.0,
                ends_seen: dict[int, int] | None = None) -> Iterator[list[RawRecord]]:
    """Every committed record of `topic`, in chunks, up to the end offsets seen at start.

    Used to restore the trainer from the compacted changelog: read_committed
    and no group, so it never disturbs anyone's committed offsets. The end
    offsets it reads up to are copied into `ends_seen` when given.
    """
    eof: dict[str, Any] = {"enable.partition.eof": True}
    consumer = make_consumer(kafka, client_id, f"{client_id}-reader", **eof)
    try:
        # Read (committed records) up to the true end: with an open transaction
        # in the way this waits until it is committed or aborted.
        ends = high_watermarks(kafka, topic, client_id=client_id)
        if ends_seen is not None:
            ends_seen.update(ends)
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([_TP(topic, p, OFFSET_BEGINNING) for p in pending])
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise KafkaEdgeError(f"reading {topic} to its end took over {timeout_s}s")
            chunk: list[RawRecord] = []
            for msg in consumer.consume(batch, timeout=0.5):
                err = msg.error()
                if err is not None:
                    # read_committed reaches "EOF" at the last stable offset: an
                    # open transaction (another trainer's, or one about to
                    # commit) is not the end. Only the position says we are done.
                    if err.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001
                        _raise_if_fatal(err)
                    continue
                rec = to_record(msg)
                if rec.offset < ends[rec.partition]:
                    chunk.append(rec)
                if rec.offset + 1 >= ends[rec.partition]:
                    pending.discard(rec.partition)
            # Transaction markers occupy offsets without being delivered: the
            # position, not the last record, says whether a partition is done.
            for tp in consumer.position([_TP(topic, p) for p in pending]):
                if tp.offset >= ends[tp.partition]:
                    pending.discard(tp.partition)
            if chunk:
                yield chunk
    except KafkaException as exc:
        raise KafkaEdgeError(f"reading {topic} failed: {exc}") from exc
    finally:
        consumer.close()
