"""`RequestConsumer`: a low-latency group member for request topics, with explicit commits.

Unlike `GroupConsumer.poll_batch` (which waits its whole timeout to fill a
micro-batch: right for the trainer), `poll` returns as soon as one request is
there, with whatever else is already fetched. Offsets are committed only when
the caller says so (`commit`), after its answers are acknowledged:
at-least-once. Low-latency librdkafka defaults (LATENCY_CONSUMER_DEFAULTS)
apply to this consumer only; a user's -X still wins.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from confluent_kafka import Consumer, KafkaException, Message
from confluent_kafka import TopicPartition as _TP

from stream_app.config import KafkaConfig
from stream_app.kafka.clients import (
    LATENCY_CONSUMER_DEFAULTS,
    REPORT_EOF,
    leave_group,
    make_consumer,
)
from stream_app.kafka.consumer import lag_behind, starts_at_end
from stream_app.kafka.exceptions import KafkaEdgeError
from stream_app.kafka.first_fetch import SILENT_AFTER_S, FirstFetch, stuck
from stream_app.kafka.polling import poll_available
from stream_app.kafka.records import Partition, RawRecord

log = logging.getLogger(__name__)

OnPartitions = Callable[[list[Partition]], None]


class RequestConsumer:
    """Subscribe `topics` in `group_id`; rebalance callbacks get `(topic, partition)` lists.

    `on_revoke` runs inside `poll`, before the partitions move: the place to
    commit what was answered (`commit(..., asynchronous=False)`). `on_lost`
    means they already moved: nothing may be committed for them.
    """

    def __init__(self, kafka: KafkaConfig, *, client_id: str, group_id: str,
                 topics: Sequence[str], on_assign: OnPartitions | None = None,
                 on_revoke: OnPartitions | None = None,
                 on_lost: OnPartitions | None = None) -> None:
        # enable.partition.eof: a fetched partition is heard from even when idle,
        # so one librdkafka never started fetching can be told apart (first_fetch).
        self._consumer: Consumer = make_consumer(kafka, client_id, group_id,
                                                 enforce=REPORT_EOF,
                                                 **LATENCY_CONSUMER_DEFAULTS)
        self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost
        self._starts_at_end = starts_at_end(kafka, client_id, group_id)
        self._first_fetch = FirstFetch()
        self._owned: set[Partition] = set()
        self._latest: dict[Partition, int] = {}  # the highest offset asked to commit
        self._ends_heard: dict[Partition, int] = {}  # where an end event said it ended
        self._revoked: set[Partition] = set()  # since the current poll's first message
        self._drained = True  # the last poll emptied librdkafka's queue
        self.silent_after_s = SILENT_AFTER_S
        self._consumer.subscribe(list(topics), on_assign=self._assigned,
                                 on_revoke=self._handle_revoke, on_lost=self._handle_lost)

    def _assigned(self, _c: Consumer, parts: list[_TP]) -> None:
        got = [(tp.topic, tp.partition) for tp in parts]
        log.info("assigned partitions=%s", got)
        self._owned.update(got)
        if self._on_assign is not None:
            self._on_assign(got)
        self._first_fetch.assigned(got, time.monotonic())

    def _handle_revoke(self, _c: Consumer, parts: list[_TP]) -> None:
        gone = [(tp.topic, tp.partition) for tp in parts]
        self._first_fetch.gone(gone)
        try:
            if self._on_revoke is not None:
                self._on_revoke(gone)  # may still commit for them
        finally:
            self._leave(gone)

    def _handle_lost(self, _c: Consumer, parts: list[_TP]) -> None:
        gone = [(tp.topic, tp.partition) for tp in parts]
        self._first_fetch.gone(gone)
        self._leave(gone)
        if self._on_lost is not None:
            self._on_lost(gone)

    def _leave(self, gone: list[Partition]) -> None:
        self._owned.difference_update(gone)
        self._revoked.update(gone)
        for part in gone:
            self._latest.pop(part, None)
            self._ends_heard.pop(part, None)

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Up to `max_records` requests, blocking at most `timeout_s` for the first one.

        `poll_available` takes the first message with `poll()` and the rest with
        `consume()`. A rebalance inside `consume()` purges what librdkafka holds
        of a revoked partition, but not the record `poll()` already returned:
        that one is left out here. Its partition's new owner answers it, and
        committing its offset here would overwrite the new owner's.
        """
        first: list[tuple[str, int, int]] = []

        def took(msg: Message) -> None:
            self._revoked.clear()  # a revoke inside poll() came before `msg`
            if msg.error() is None:
                first.append((msg.topic() or "", msg.partition() or 0, msg.offset() or 0))

        polled = poll_available(self._consumer, max_records, timeout_s, on_first=took)
        self._first_fetch.heard({(r.topic, r.partition) for r in polled.records}
                                | polled.eof.keys())
        self._ends_heard.update((p, o) for p, o in polled.eof.items() if p in self._owned)
        self._drained = polled.drained
        records = polled.records
        if first and first[0][:2] in self._revoked:
            log.info("left out request %s[%d]@%d: its partition was revoked meanwhile", *first[0])
            records = [r for r in records if (r.topic, r.partition, r.offset) != first[0]]
        return records

    def silent(self, after_s: float) -> list[Partition]:
        """Assigned partitions not heard from (no request, no end) `after_s` after their
        assignment."""
        return self._first_fetch.silent(time.monotonic(), after_s)

    def stuck(self) -> list[Partition]:
        """Partitions librdkafka never fetched though the cluster serves them (see
        `first_fetch`); only when the last poll emptied the local queue, since a
        partition's first records may wait behind a backlog of the others'."""
        if not self._drained:
            return []
        return stuck(self._first_fetch, self._consumer, self.silent_after_s)

    def commit(self, offsets: Mapping[Partition, int], *, asynchronous: bool = True) -> None:
        """Commit next-offsets per partition (last answered offset + 1), for the partitions
        still ours: the group broker does not check who owns a partition.

        A synchronous commit (on revoke, at shutdown) sends every partition's
        latest offset again: an asynchronous commit that failed is reported to
        nobody, and an idle partition's offset would stay behind, so its next
        owner would answer those requests again.
        """
        for part, offset in offsets.items():
            if part in self._owned:
                self._latest[part] = max(offset, self._latest.get(part, offset))
        chosen = offsets if asynchronous else self._latest
        parts = [_TP(t, p, o) for (t, p), o in chosen.items() if (t, p) in self._owned]
        if not parts:
            return
        try:
            if asynchronous:
                self._consumer.commit(offsets=parts, asynchronous=True)
            else:
                self._consumer.commit(offsets=parts, asynchronous=False)
        except KafkaException as exc:
            raise KafkaEdgeError(f"offset commit failed: {exc}") from exc

    def lag(self) -> dict[Partition, int]:
        """Requests behind the high watermark per assigned partition (cached statistics;
        before a partition's first request, from where its end was heard or else where
        the reset policy starts)."""
        return lag_behind(self._consumer, self._consumer.assignment(),
                          starts_at_end=self._starts_at_end, ends_heard=self._ends_heard)

    def close(self) -> None:
        """Leave the group (revoking, so `on_revoke` may commit once more)."""
        leave_group(self._consumer)

    def __enter__(self) -> RequestConsumer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
