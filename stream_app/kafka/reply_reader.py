"""`ReplyReader`: read every partition of a reply topic from the end offsets taken at `open()`.

The request client (and the latency bench) reads `predictions` with it: no
group and nothing committed, read_committed, and only answers produced after
`open()` are seen. Exact end offsets are taken up front, not OFFSET_END: that
one is resolved lazily and could land after an answer to a request sent next.
`poll` returns as soon as one answer is there (low-latency defaults apply).
Partitions added to the topic later are read from their beginning, looked for
every `GROW_CHECK_S`: an answer keyed to one timed out in a long-lived client.
"""

from __future__ import annotations

import time
from types import TracebackType

from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as _TP

from stream_app.config import KafkaConfig
from stream_app.kafka.clients import LATENCY_CONSUMER_DEFAULTS, make_consumer
from stream_app.kafka.ends import watermark_offsets
from stream_app.kafka.exceptions import KafkaEdgeError
from stream_app.kafka.polling import poll_available
from stream_app.kafka.records import RawRecord
from stream_app.kafka.tail import assign_added

GROW_CHECK_S = 30.0
"""How often `poll` asks whether the topic gained partitions (a metadata round trip)."""


class ReplyReader:
    """`open()` assigns `topic` at its current ends; `poll` hands out what arrives after."""

    def __init__(self, kafka: KafkaConfig, topic: str, *, client_id: str, group_id: str) -> None:
        self.kafka, self.topic, self.client_id, self.group_id = kafka, topic, client_id, group_id
        self._consumer: Consumer | None = None
        self._partitions: set[int] = set()
        self._grow_at = 0.0

    def open(self, timeout_s: float = 10.0) -> None:
        consumer = make_consumer(self.kafka, self.client_id, self.group_id, logger=None,
                                 **LATENCY_CONSUMER_DEFAULTS)  # polled only while waiting
        self._consumer = consumer
        try:
            meta = consumer.list_topics(self.topic, timeout=timeout_s)
            if self.topic not in meta.topics or meta.topics[self.topic].error is not None:
                raise KafkaEdgeError(f"topic {self.topic} does not exist (create the topics: "
                                     "`stream-app topics create` with the same prefix)")
            deadline = time.monotonic() + timeout_s  # a topic just created has no leader yet
            ends = [_TP(self.topic, p, watermark_offsets(consumer, _TP(self.topic, p), deadline)[1])
                    for p in sorted(meta.topics[self.topic].partitions)]
            consumer.assign(ends)
            self._partitions = {tp.partition for tp in ends}
            self._grow_at = time.monotonic() + GROW_CHECK_S
        except KafkaException as exc:
            raise KafkaEdgeError(f"cannot open {self.topic}: {exc}") from exc

    def poll(self, max_records: int, timeout_s: float) -> list[RawRecord]:
        """Up to `max_records` answers, blocking at most `timeout_s` for the first one."""
        if self._consumer is None:
            raise KafkaEdgeError(f"ReplyReader({self.topic}) used before open()")
        if time.monotonic() >= self._grow_at:
            self._grow(self._consumer)
        records = poll_available(self._consumer, max_records, timeout_s).records
        return records

    def _grow(self, consumer: Consumer) -> None:
        """Assign partitions added since `open()` from their beginning; a cluster that
        cannot answer now is asked again at the next check."""
        self._grow_at = time.monotonic() + GROW_CHECK_S
        try:
            self._partitions.update(assign_added(consumer, self.topic, self._partitions, 2.0))
        except KafkaException:
            return

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> ReplyReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
