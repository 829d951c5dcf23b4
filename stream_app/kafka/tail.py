"""`TailReader`: follow every partition of a topic from the beginning, with EOF tracking.

The scorer materialises `embeddings` with it: no group (nothing is committed,
every replica reads everything), read_committed, and `enable.partition.eof`
so reaching the end of a partition is reported even when the last offsets are
transaction markers that are never delivered as records.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import TracebackType

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException
from confluent_kafka import TopicPartition as _TP

from stream_app.config import KafkaConfig
from stream_app.kafka.clients import REPORT_EOF, make_consumer
from stream_app.kafka.ends import watermark_offsets
from stream_app.kafka.exceptions import KafkaEdgeError
from stream_app.kafka.polling import poll_available
from stream_app.kafka.records import RawRecord

log = logging.getLogger(__name__)


def assign_added(consumer: Consumer, topic: str, known: set[int],
                 timeout_s: float) -> list[int]:
    """Assign, from their beginning, the partitions of `topic` not in `known`; the new
    ones. KafkaException when the cluster cannot list the topic now."""
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None:
        return []
    new = sorted(set(meta.partitions) - known)
    if new:
        consumer.incremental_assign([_TP(topic, p, OFFSET_BEGINNING) for p in new])
    return new


@dataclass(frozen=True, slots=True)
class TailBatch:
    """One poll: `records` in order, and `eof` = partition -> offset where its end was reached."""

    records: list[RawRecord] = field(default_factory=list)
    eof: dict[int, int] = field(default_factory=dict)


class TailReader:
    """Assign all partitions of `topic` from the beginning; `open()` returns the end offsets.

    >>> # with TailReader(kafka, kafka.topics.embeddings, client_id="scorer") as tail:
    >>> #     ends = tail.open(); batch = tail.poll(5000, timeout_s=0.05)
    """

    def __init__(self, kafka: KafkaConfig, topic: str, *, client_id: str) -> None:
        self.kafka, self.topic, self.client_id = kafka, topic, client_id
        self._consumer: Consumer | None = None
        self._opened_at: dict[int, tuple[int, int]] = {}  # partition -> (low, high) at open
        self._next: dict[int, int] = {}  # partition -> offset after the last record or end heard
        self.failed_checks = 0  # grow() calls in a row that could not list the topic

    def open(self, timeout_s: float = 10.0) -> dict[int, int]:
        """Assign from the beginning; partition -> end offset at this moment (the load target)."""
        consumer = self._consumer = self._new_consumer()
        try:
            meta = consumer.list_topics(self.topic, timeout=timeout_s)
            if self.topic not in meta.topics or meta.topics[self.topic].error is not None:
                raise KafkaEdgeError(f"topic {self.topic} does not exist")
            parts = sorted(meta.topics[self.topic].partitions)
            deadline = time.monotonic() + timeout_s
            self._opened_at = {p: watermark_offsets(consumer, _TP(self.topic, p), deadline)
                               for p in parts}
            consumer.assign([_TP(self.topic, p, OFFSET_BEGINNING) for p in parts])
        except KafkaException as exc:
            raise KafkaEdgeError(f"cannot open {self.topic}: {exc}") from exc
        return {p: high for p, (_low, high) in self._opened_at.items()}

    def grow(self, timeout_s: float = 10.0) -> list[int]:
        """Assign, from the beginning, partitions added since `open()`; the new ones.

        Rows keyed to them would otherwise never be read until a restart. Their
        keys' older rows stay in the old partitions, so which one a reader applies
        last is no longer the log's order: the caller warns. A check the cluster
        cannot answer (an outage) finds nothing and is made again next time: it
        stopped the scorer (exit 1) in the middle of an outage it would have
        ridden out.
        """
        try:
            new = assign_added(self._opened(), self.topic, set(self._opened_at), timeout_s)
        except KafkaException as exc:
            self.failed_checks += 1
            log.warning("cannot list %s to look for new partitions (%s); looking again "
                        "at the next check", self.topic, exc)
            return []
        self.failed_checks = 0
        self._opened_at.update({p: (0, 0) for p in new})
        return new

    def renew(self) -> None:
        """Replace the client, each partition going on after the last record or end it
        handed out.

        Once (in a CI run), after the broker came back from a stop on the same
        port, this client stayed cut off for good: every check failed with
        _TRANSPORT while the scorer's request client, in the same process, was
        served again. A new client is what a restart would bring, without
        reading the whole table again. The offsets are this reader's own, not
        the client's `position()`: that stays unknown on a new client until a
        partition's next record, so a second renewal in one outage (or of a
        quiet partition) would have read it again from the start, older rows of
        a key over newer ones meanwhile.
        """
        old = self._opened()
        new = self._new_consumer()
        try:
            new.assign([_TP(self.topic, p, self._next.get(p, OFFSET_BEGINNING))
                         for p in sorted(self._opened_at)])
        except KafkaException:
            new.close()
            raise
        self._consumer, self.failed_checks = new, 0
        try:
            old.close()
        except KafkaException as exc:
            log.warning("closing the replaced %s client: %s", self.topic, exc)

    def poll(self, max_records: int, timeout_s: float) -> TailBatch:
        """What is fetched now (blocking at most `timeout_s` for the first record)."""
        polled = poll_available(self._opened(), max_records, timeout_s)
        batch = TailBatch(polled.records,
                          {partition: offset for (_, partition), offset in polled.eof.items()})
        for rec in batch.records:
            self._next[rec.partition] = rec.offset + 1
        for partition, offset in batch.eof.items():
            self._next[partition] = max(self._next.get(partition, 0), offset)
        return batch

    def lag(self) -> dict[int, int]:
        """Records behind the high watermark per partition (cached statistics, no round trip).

        Before a partition's first fetch neither its position nor its cached
        watermark is known: it counts from its start to its end as `open()` saw
        them, so a partition not fetched yet shows its whole backlog, not nothing.
        After a `renew()` it counts from where the old client got to.
        """
        consumer = self._opened()
        out: dict[int, int] = {}
        for tp in consumer.position(consumer.assignment()):
            start, end = self._opened_at.get(tp.partition, (-1, -1))
            _low, high = consumer.get_watermark_offsets(tp, cached=True) or (-1, -1)
            position = tp.offset if tp.offset >= 0 else self._next.get(tp.partition, start)
            high = high if high >= 0 else end
            if position >= 0 and high >= 0:
                out[tp.partition] = max(0, high - position)
        return out

    def _new_consumer(self) -> Consumer:
        # Enforced: readiness is every partition's end reached, which only EOF events tell
        # when the last offsets are transaction markers. A -X false kept the scorer loading.
        return make_consumer(self.kafka, self.client_id, f"{self.client_id}-unused",
                             enforce=REPORT_EOF)

    def _opened(self) -> Consumer:
        if self._consumer is None:
            raise KafkaEdgeError(f"TailReader({self.topic}) used before open()")
        return self._consumer

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> TailReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
