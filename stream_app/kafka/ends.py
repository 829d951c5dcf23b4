"""End offsets of a topic, and reading a topic to its end (the trainer's changelog).

The high watermark (true end) and the last stable offset (where a read_committed
reader stops) differ while a transaction is open or its markers are pending;
which of the two a caller needs, and in what order they are read, is what makes
a restore or a snapshot tag provable.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from contextlib import closing

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as _TP

from stream_app.config import KafkaConfig
from stream_app.events import KeyValue
from stream_app.kafka.clients import REPORT_EOF, make_consumer
from stream_app.kafka.exceptions import KafkaEdgeError
from stream_app.kafka.polling import raise_if_fatal

_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})
"""Not flagged retriable on a watermark query, but a leader election under way."""


def watermark_offsets(consumer: Consumer, tp: _TP, deadline: float) -> tuple[int, int]:
    """(low, high) of `tp`, asked again until `deadline` (monotonic) while the broker says
    its leader is moving: a topic just created has none for a moment."""
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException as exc:
            err = exc.args[0]
            if not (err.retriable() or err.code() in _MOVING) or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def end_offsets(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """High watermark of every partition of `topic`, asked of the broker."""
    meta = consumer.list_topics(topic, timeout=timeout_s)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        raise KafkaEdgeError(f"topic {topic} does not exist")
    deadline = time.monotonic() + timeout_s
    return {p: watermark_offsets(consumer, _TP(topic, p), deadline)[1]
            for p in sorted(meta.topics[topic].partitions)}


class Watermarks:
    """The true end of each partition, asked with isolation.level=read_uncommitted,
    of one client kept open across calls (made at the first).

    A read_committed consumer's watermark query answers the last stable offset:
    it stops at another producer's open transaction (a killed trainer's, until
    `transaction.timeout.ms` aborts it) and so hides every committed record
    after it. Restoring up to that point would lose those records.
    Kept open because the waits that ask it every 0.1 s (`settled_ends`, the
    snapshot's proof) pause the trainer's loop: a client made and closed per
    call took 68 ms on a local broker, a kept one 7 ms.
    """

    def __init__(self, kafka: KafkaConfig, *, client_id: str) -> None:
        self._kafka, self._client_id = kafka, client_id
        self._consumer: Consumer | None = None

    def _client(self) -> Consumer:
        if self._consumer is None:
            self._consumer = make_consumer(self._kafka, self._client_id,
                                           f"{self._client_id}-hwm", read_committed=False)
        return self._consumer

    def of(self, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
        try:
            return end_offsets(self._client(), topic, timeout_s)
        except KafkaException as exc:
            raise KafkaEdgeError(f"cannot read the end offsets of {topic}: {exc}") from exc
        finally:
            self.serve()

    def ends_of(self, partitions: list[tuple[str, int]], timeout_s: float) -> dict[
            tuple[str, int], int]:
        """The true ends of `partitions` alone, within `timeout_s` in all (no metadata
        request): those answered by then; a `KafkaEdgeError` when one fails."""
        deadline = time.monotonic() + timeout_s
        out: dict[tuple[str, int], int] = {}
        try:
            for topic, partition in partitions:
                if time.monotonic() >= deadline:
                    break
                out[(topic, partition)] = self._client().get_watermark_offsets(
                    _TP(topic, partition), timeout=max(0.05, deadline - time.monotonic()))[1]
        except KafkaException as exc:
            raise KafkaEdgeError(f"cannot read the end offsets of {partitions}: {exc}") from exc
        finally:
            self.serve()
        return out

    def serve(self) -> None:
        """Serve the client's error and log lines (`client_logs.ClientLog`): nothing else polls
        it, and while queries are far apart they would wait, and pile up, in its queue."""
        if self._consumer is not None:
            self._consumer.poll(0)  # no subscription: hands out no record

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def high_watermarks(kafka: KafkaConfig, topic: str, *, client_id: str,
                    timeout_s: float = 10.0) -> dict[int, int]:
    """`Watermarks.of`, once."""
    with closing(Watermarks(kafka, client_id=client_id)) as watermarks:
        return watermarks.of(topic, timeout_s)


def ends_and_stable(consumer: Consumer, watermarks: Watermarks,
                    topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """(high watermarks, last stable offsets) of `topic`, the stable offsets (what the
    read_committed `consumer` sees) read first: equal to the ends read after them,
    they show that nothing below those ends was open or waiting for its markers."""
    stable = end_offsets(consumer, topic)
    return watermarks.of(topic), stable


def settled_ends(consumer: Consumer, watermarks: Watermarks, topic: str, *,
                 wait_s: float) -> dict[int, int]:
    """The high watermarks of `topic` once the last stable offsets reach them
    (`ends_and_stable`); after `wait_s` (another writer's long transaction) as they
    are."""
    if wait_s <= 0:
        return watermarks.of(topic)
    deadline = time.monotonic() + wait_s
    while True:
        ends, stable = ends_and_stable(consumer, watermarks, topic)
        if stable == ends or time.monotonic() >= deadline:
            return ends
        time.sleep(0.1)


def read_to_end(kafka: KafkaConfig, topic: str, *, client_id: str,
                batch: int = 5000, stall_s: float = 600.0,
                ends_seen: dict[int, int] | None = None,
                start: dict[int, int] | None = None,
                settle_s: float = 0.0) -> Generator[list[KeyValue], None, None]:
    """(key, value) of every committed record of `topic`, in chunks, up to the end
    offsets seen at start.

    A chunk is what one poll brought, so it may be empty: while the read waits
    (behind an open transaction, or for the broker) empty chunks keep coming
    every half second, and a caller can stop between them.

    Used to restore the trainer from the compacted changelog: read_committed
    and no group, so it never disturbs anyone's committed offsets. The end
    offsets it reads up to are copied into `ends_seen` when given. `start`
    gives the first offset per partition (default: the beginning). With
    `settle_s`, the end offsets are taken once no transaction is open or
    waiting for its markers (up to that long): a transaction's markers are
    written after its commit or abort returns, and ends read before them are
    short of the offsets the topic settles at. KafkaEdgeError once `stall_s` pass
    without a record or a partition done, the caller's time with a chunk
    included: a changelog of tens of millions of rows takes longer than any
    fixed limit, and a restart would meet the same limit again.
    """
    consumer = make_consumer(kafka, client_id, f"{client_id}-reader",
                             enforce=REPORT_EOF)
    try:
        # Read (committed records) up to the true end: with an open transaction
        # in the way this waits until it is committed or aborted.
        with closing(Watermarks(kafka, client_id=client_id)) as watermarks:
            ends = settled_ends(consumer, watermarks, topic, wait_s=settle_s)
        if ends_seen is not None:
            ends_seen.update(ends)
        first = {p: (start or {}).get(p, OFFSET_BEGINNING) for p in ends}
        pending = {p for p, end in ends.items() if end > max(first[p], 0)}
        consumer.assign([_TP(topic, p, first[p]) for p in pending])
        deadline = time.monotonic() + stall_s
        while pending:
            if time.monotonic() > deadline:
                raise KafkaEdgeError(f"reading {topic} to its end: no record for {stall_s:g}s "
                                     f"with partitions {sorted(pending)} short of their ends")
            chunk: list[KeyValue] = []
            left = len(pending)
            for msg in consumer.consume(batch, timeout=0.5):
                err = msg.error()
                if err is not None:
                    # read_committed reaches "EOF" at the last stable offset: an
                    # open transaction (another trainer's, or one about to
                    # commit) is not the end. Only the position says we are done.
                    if err.code() != KafkaError._PARTITION_EOF:  # noqa: SLF001
                        raise_if_fatal(err)
                    continue
                # A pair, not a RawRecord: a restore reads a million of them.
                partition, offset = msg.partition() or 0, msg.offset() or 0
                if offset < ends[partition]:
                    chunk.append((msg.key(), msg.value()))
                if offset + 1 >= ends[partition]:
                    pending.discard(partition)
            # Transaction markers occupy offsets without being delivered: the
            # position, not the last record, says whether a partition is done.
            for tp in consumer.position([_TP(topic, p) for p in pending]):
                if tp.offset >= ends[tp.partition]:
                    pending.discard(tp.partition)
            yield chunk
            if chunk or len(pending) < left:
                deadline = time.monotonic() + stall_s
    except KafkaException as exc:
        raise KafkaEdgeError(f"reading {topic} failed: {exc}") from exc
    finally:
        consumer.close()
