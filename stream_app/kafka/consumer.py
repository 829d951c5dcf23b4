"""Group consumption in micro-batches (end offsets and reading to the end: `ends`)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as _TP

from stream_app.config import KafkaConfig
from stream_app.kafka.clients import (
    MAX_POLL_INTERVAL_MS,
    REPORT_EOF,
    consumer_config,
    leave_group,
    make_consumer,
    ms_setting,
)
from stream_app.kafka.ends import Watermarks, end_offsets, ends_and_stable
from stream_app.kafka.event_time import Barrier, EventTimeMerger
from stream_app.kafka.exceptions import KafkaEdgeError
from stream_app.kafka.first_fetch import FirstFetch, stuck
from stream_app.kafka.polling import raise_if_fatal
from stream_app.kafka.records import Partition, RawRecord, to_record
from stream_app.kafka.settle import settle

log = logging.getLogger(__name__)


PAUSED_ENDS_EVERY_S = 10.0
"""How often `lag` asks the broker for the ends of paused partitions. librdkafka's cached
high watermark comes from fetch responses, and a paused partition is not fetched, so its
lag froze at the pause while its backlog on the broker grew (consumer review)."""
PAUSED_ENDS_TIMEOUT_S = 1.0

CO_PARTITIONED_ASSIGNOR = "range"
"""Gives partition i of every subscribed topic to one member (its rebalances are eager)."""


class GroupConsumer:
    """A consumer group member that hands out micro-batches bounded by count and wait.

    Records of different partitions come out oldest event time first (see
    `event_time.EventTimeMerger`); `event_time` reads it from a record, by
    default the Kafka timestamp. Records of one partition keep their order.
    With `co_partitioned`, records that `barrier` names go out aligned across
    the topics (`event_time`'s module docstring).

    Rebalance safety: records of partitions revoked while a batch is being
    gathered are dropped from it and from the queues (they were neither applied
    nor committed, so the new owner reads them from the committed offset).
    """

    def __init__(self, kafka: KafkaConfig, *, client_id: str, group_id: str,
                 topics: Sequence[str],
                 on_assign: Callable[[list[Partition]], None] | None = None,
                 on_revoke: Callable[[list[Partition]], None] | None = None,
                 co_partitioned: bool = False,
                 event_time: Callable[[RawRecord], int] = lambda r: r.timestamp_ms,
                 barrier: Barrier = lambda _r: None) -> None:
        # co_partitioned: partition i of every topic goes to the same member
        # (the range assignor; rebalances are eager). The trainer needs it: a
        # user's clicks and purchases share the partition number, and its row
        # must be learned by one trainer only.
        # enable.partition.eof tells a partition that is caught up (nothing to
        # wait for) from one whose next record is still on the broker.
        enforce: dict[str, Any] = dict(REPORT_EOF)
        if co_partitioned:
            enforce["partition.assignment.strategy"] = CO_PARTITIONED_ASSIGNOR
        self._consumer: Consumer = make_consumer(kafka, client_id, group_id, enforce=enforce)
        self._watermarks = Watermarks(kafka, client_id=client_id)
        self._starts_at_end = starts_at_end(kafka, client_id, group_id)
        self._merger = EventTimeMerger(event_time, barrier=barrier,
                                       co_partitioned=topics if co_partitioned else ())
        self._revoked: set[Partition] = set()
        self._assigned: set[Partition] = set()
        self._assigned_at = -math.inf
        self._at_end: set[Partition] = set()
        self._ends_heard: dict[Partition, int] = {}  # where an end event said it ended
        self._paused: set[Partition] = set()
        self._paused_ends: dict[Partition, int] = {}  # asked of the broker (`_ends_of_paused`)
        self._paused_ends_at = -math.inf
        self._first_fetch = FirstFetch()
        self._on_assign = on_assign
        self._closing = False  # an assignment `close` meets is not handed on
        self._on_revoke = on_revoke
        self._polled_at = time.monotonic()
        self._max_poll_interval_s = ms_setting(kafka, "max.poll.interval.ms",
                                               MAX_POLL_INTERVAL_MS) / 1000
        self._consumer.subscribe(list(topics), on_assign=self._assign, on_revoke=self._revoke,
                                 on_lost=self._revoke)

    @property
    def raw(self) -> Consumer:
        """The librdkafka consumer, for the transaction function only."""
        return self._consumer

    @property
    def max_poll_interval_s(self) -> float:
        return self._max_poll_interval_s

    @property
    def assignment(self) -> set[Partition]:
        return set(self._assigned)

    def owns_all(self, counts: Mapping[str, int]) -> bool:
        """True when every partition of the topics with these partition counts
        (`partition_counts`) is assigned to this member.

        The assignment seen here is updated only inside a poll: after more
        than half of max.poll.interval.ms without one, the group may already
        have moved partitions away, so the answer is False.
        """
        if time.monotonic() - self._polled_at > self._max_poll_interval_s / 2:
            return False
        wanted = {(t, p) for t, n in counts.items() for p in range(n)}
        return bool(wanted) and wanted <= self._assigned

    def partition_counts(self, topics: Iterable[str], timeout_s: float = 10.0) -> dict[str, int]:
        """Each topic's partition count in the cluster's metadata now (topics it lacks left
        out)."""
        try:
            meta = self._consumer.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            raise KafkaEdgeError(f"cannot list topics: {exc}") from exc
        return {t: len(meta.topics[t].partitions) for t in topics
                if t in meta.topics and meta.topics[t].error is None and meta.topics[t].partitions}

    def _assign(self, _c: Consumer, parts: list[_TP]) -> None:
        got = [(tp.topic, tp.partition) for tp in parts]
        self._assigned.update(got)
        if self._closing:
            # Delivered inside leave_group's poll: the owner's restore ran there, and its
            # error (or a restore outlasting the leave's wait) crashed the client at close.
            log.info("partitions=%s assigned while leaving the group: left unread", got)
            return
        log.info("assigned partitions=%s", got)
        if self._on_assign:
            self._on_assign(got)
        # From now, not from the callback's start: the trainer's restores there
        # run for minutes at a million rows, and no poll is made meanwhile.
        self._assigned_at = time.monotonic()
        self._first_fetch.assigned(got, self._assigned_at)

    def _revoke(self, _c: Consumer, parts: list[_TP]) -> None:
        gone = [(tp.topic, tp.partition) for tp in parts]
        self.discard_queued(gone)  # while still ours, so a paused one can be resumed
        self._assigned.difference_update(gone)
        self._first_fetch.gone(gone)
        self._revoked.update(gone)
        log.info("revoked partitions=%s", gone)
        if self._on_revoke:
            self._on_revoke(gone)

    def discard_queued(self, partitions: Iterable[Partition]) -> None:
        """Forget queued records of `partitions`: revoked, or rewound to their committed offset."""
        parts = set(partitions)
        self._merger.drop(parts)
        self._at_end -= parts
        for part in parts:
            self._ends_heard.pop(part, None)
        # A rewound partition must fetch again, and librdkafka keeps a pause
        # flag across rebalances: a revoked one that came straight back would
        # stay paused for good.
        resume = [_TP(t, p) for t, p in parts & self._paused]
        if resume:
            try:
                self._consumer.resume(resume)
            except KafkaException as exc:
                log.warning("resume of partitions %s failed: %s", resume, exc)
        self._paused -= parts

    def poll_batch(self, max_records: int, max_wait_s: float) -> list[RawRecord]:
        """Up to `max_records` records, oldest event time first, waiting at most `max_wait_s`.

        While a partition with records on the broker has none queued, the batch
        waits for it (its next record may be the oldest); at `max_wait_s` what
        is queued goes out anyway. Partitions assigned during the call get the
        whole wait from their assignment: a group join or an on-assign restore
        may have used up the batch's wait, and the first fetches of the new
        partitions land tens of milliseconds apart, so the batch would go out
        with the first partition's records ahead of the others' older ones.
        """
        started = self._polled_at = time.monotonic()
        self._watermarks.serve()
        batch: list[RawRecord] = []
        fetched = False
        while True:
            batch += self._merger.release(max_records - len(batch), self._behind())
            left = max(started, self._assigned_at) + max_wait_s - time.monotonic()
            # At least one consume() a batch, even when the queue holds a batch already:
            # max.poll.interval.ms counts from the last one, and rebalances run in it.
            done = len(batch) >= max_records or left <= 0
            if done and fetched:
                break
            fetched = True
            self._revoked.clear()
            msgs = self._consumer.consume(max_records, timeout=0 if done else min(left, 0.1))
            if self._revoked:
                # A rebalance ran inside consume(): records gathered before it of
                # a revoked partition are dropped, even when the partition came
                # straight back (eager rebalance): its position went back to the
                # committed offset, so they will be read again. librdkafka drops
                # their fetched-but-undelivered records itself.
                batch = [r for r in batch if (r.topic, r.partition) not in self._revoked]
            self._merger.add(self._records(msgs))
            self._bound_queues(max_records)
        if len(batch) < max_records:
            batch += self._merger.release_due(max_records - len(batch), self._behind())
        return batch

    def _records(self, msgs: list[Message]) -> Iterator[RawRecord]:
        for msg in msgs:
            err = msg.error()
            part = (msg.topic() or "", msg.partition() or 0)
            if err is None:
                self._at_end.discard(part)
                self._first_fetch.heard((part,))
                yield to_record(msg)
            elif err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001
                self._at_end.add(part)
                self._ends_heard[part] = msg.offset() or 0
                self._first_fetch.heard((part,))
            else:
                raise_if_fatal(err)

    def silent(self, after_s: float) -> list[Partition]:
        """Assigned partitions not heard from (no record, no end) `after_s` after their
        assignment."""
        return self._first_fetch.silent(time.monotonic(), after_s)

    def stuck(self, after_s: float) -> list[Partition]:
        """Partitions silent `after_s` after their assignment though the cluster serves
        them: librdkafka never started fetching them (see `first_fetch`)."""
        return stuck(self._first_fetch, self._consumer, after_s)

    def _behind(self) -> set[Partition]:
        """Assigned partitions not known to be caught up: the broker may hold more of them."""
        return self._assigned - self._at_end

    def _bound_queues(self, max_records: int) -> None:
        """Pause partitions queued far ahead of the others; resume them once half drained."""
        limit = 2 * max_records
        pause = [p for p in self._assigned - self._paused if self._merger.queued(p) > limit]
        resume = [p for p in self._paused if self._merger.queued(p) <= limit // 2]
        if pause:
            self._consumer.pause([_TP(t, p) for t, p in pause])
            self._paused.update(pause)
        if resume:
            self._consumer.resume([_TP(t, p) for t, p in resume])
            self._paused.difference_update(resume)

    def settle(self, parts: list[Partition], timeout_s: float = 60.0,
               on_wait: Callable[[], None] = lambda: None) -> None:
        """Wait until no open transaction holds offsets for `parts`; see `settle.settle`."""
        settle(self._consumer, parts, timeout_s, on_wait)

    def end_offsets(self, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
        """True end (high watermark) of every partition of `topic`; see `Watermarks`."""
        return self._watermarks.of(topic, timeout_s)

    def stable_end_offsets(self, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
        """Last stable offset of every partition of `topic`: this consumer reads
        read_committed, so the broker answers where the first open or unmarked
        transaction starts (the true end when there is none)."""
        try:
            return end_offsets(self._consumer, topic, timeout_s)
        except KafkaException as exc:
            raise KafkaEdgeError(f"cannot read the stable offsets of {topic}: {exc}") from exc

    def ends_and_stable(self, topic: str) -> tuple[dict[int, int], dict[int, int]]:
        """`ends_and_stable` of `topic`, the stable offsets as this consumer sees them."""
        try:
            return ends_and_stable(self._consumer, self._watermarks, topic)
        except KafkaException as exc:
            raise KafkaEdgeError(f"cannot read the stable offsets of {topic}: {exc}") from exc

    def queued(self) -> int:
        """Records fetched and not handed out yet: an empty batch with some is not idleness
        (event-time order or a barrier holds them for seconds)."""
        return len(self._merger)

    def lag(self) -> dict[Partition, int]:
        """Records not handed out yet per assigned partition: queued + behind the high watermark.

        The high watermark is librdkafka's cached one (from fetch responses).
        """
        behind = lag_behind(self._consumer, [_TP(t, p) for t, p in self._assigned],
                            starts_at_end=self._starts_at_end, ends_heard=self._ends_heard,
                            ends=self._ends_of_paused())
        return {part: n + self._merger.queued(part) for part, n in behind.items()}

    def _ends_of_paused(self) -> dict[Partition, int]:
        """The broker's ends of the paused partitions, asked at most every
        PAUSED_ENDS_EVERY_S (the last answer meanwhile, or when the broker does not
        answer in PAUSED_ENDS_TIMEOUT_S)."""
        if not self._paused:
            return {}
        now = time.monotonic()
        if now - self._paused_ends_at >= PAUSED_ENDS_EVERY_S:
            self._paused_ends_at = now
            try:  # the paused partitions alone, within one deadline: it holds the loop
                self._paused_ends.update(
                    self._watermarks.ends_of(sorted(self._paused), PAUSED_ENDS_TIMEOUT_S))
            except KafkaEdgeError as exc:
                log.debug("lag of paused partitions: %s", exc)
        return {p: self._paused_ends[p] for p in self._paused if p in self._paused_ends}

    def close(self) -> None:
        """Leave the group (revoking, so `on_revoke` may commit once more)."""
        self._closing = True
        leave_group(self._consumer)
        self._watermarks.close()


def starts_at_end(kafka: KafkaConfig, client_id: str, group_id: str) -> bool:
    """Whether a partition without a committed offset starts at its end
    (`auto.offset.reset=latest`) rather than its beginning (the default)."""
    reset = consumer_config(kafka, client_id, group_id)["auto.offset.reset"]
    return str(reset).lower() in ("latest", "largest", "end")


def lag_behind(consumer: Consumer, parts: list[_TP], *, starts_at_end: bool,
               ends_heard: Mapping[Partition, int],
               ends: Mapping[Partition, int] | None = None) -> dict[Partition, int]:
    """Records behind librdkafka's cached high watermark per partition.

    Before the first record the position is invalid. A partition whose end was
    heard (`enable.partition.eof`: the offset it was reached at) counts from
    there: a restarted process, caught up at its committed offsets, showed
    every idle partition's whole log as lag (operator walkthrough). Otherwise
    count from where the reset policy starts, so a fresh backlog (or a
    partition librdkafka never fetches) shows as lag instead of vanishing, and
    history skipped by `auto.offset.reset=latest` does not. `ends`: the broker's ends of
    partitions librdkafka does not fetch (paused), whose cached watermark is stale.
    """
    out: dict[Partition, int] = {}
    if not parts:
        return out
    for tp in consumer.position(parts):
        low, high = consumer.get_watermark_offsets(tp, cached=True) or (-1, -1)
        if ends:
            high = max(high, ends.get((tp.topic, tp.partition), -1))
        start = tp.offset
        if start < 0:
            start = ends_heard.get((tp.topic, tp.partition), high if starts_at_end else low)
        if start >= 0 and high >= 0:
            out[(tp.topic, tp.partition)] = max(0, high - start)
    return out

