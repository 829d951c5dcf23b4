"""The trainer's consumer hands out a backlog of several partitions in event-time order."""

from __future__ import annotations

import time
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer

from stream_app.config import KafkaConfig
from stream_app.kafka.consumer import GroupConsumer
from stream_app.trainer.batch import event_time


class CountingConsume:
    """A librdkafka consumer whose consume() calls are counted."""

    def __init__(self, inner: Consumer) -> None:
        self.inner, self.calls = inner, 0

    def consume(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.inner.consume(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _interleaved_backlog(kafka: KafkaConfig, per_partition: int) -> int:
    """Event times 0, 1, 2, 3, ... spread round-robin over clicks 0, clicks 1 and
    purchases 1, each partition written whole before the next, as a fetch would
    hand them out; returns how many were sent."""
    t = kafka.topics
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 20})
    for topic, partition, first in ((t.clicks, 0, 0), (t.clicks, 1, 1), (t.purchases, 1, 2)):
        for k in range(per_partition):
            producer.produce(topic, partition=partition, key=b"u",
                             value=orjson.dumps({"ts": first + 3 * k}))
    assert producer.flush(30) == 0
    return 3 * per_partition


def test_backlog_of_three_partitions_comes_out_in_event_time_order(
        make_kafka: object) -> None:
    kafka: KafkaConfig = make_kafka(partitions=2)  # type: ignore[operator]
    t = kafka.topics
    sent = _interleaved_backlog(kafka, 1500)
    consumer = GroupConsumer(kafka, client_id="order-test", group_id=f"{kafka.topic_prefix}g",
                             topics=[t.clicks, t.purchases], co_partitioned=True,
                             event_time=event_time)
    counted = CountingConsume(consumer._consumer)  # noqa: SLF001
    consumer._consumer = counted  # type: ignore[assignment]  # noqa: SLF001
    got, consumes = [], []
    try:
        for _ in range(200):
            # A long wait: a batch whose wait runs out goes out, by design, with
            # what is queued. Asking for no more than is left keeps the last
            # batch from waiting its whole time.
            before = counted.calls
            got += consumer.poll_batch(min(400, sent - len(got)), 30.0)
            consumes.append(counted.calls - before)
            if len(got) >= sent:
                break
    finally:
        consumer.close()
    # librdkafka's max.poll.interval.ms counts from the last consume(): a batch served
    # from the queue alone let several batches' work run between two of them.
    assert min(consumes) >= 1, consumes
    times = [event_time(r) for r in got]
    assert len(times) == sent
    assert times == sorted(times)
    for part in {(r.topic, r.partition) for r in got}:
        offsets = [r.offset for r in got if (r.topic, r.partition) == part]
        assert offsets == list(range(len(offsets)))


def test_partitions_assigned_after_the_batch_wait_was_spent_still_come_out_in_order(
        make_kafka: object) -> None:
    """The on-assign callback (the trainer's restore) outlasts the batch wait. The
    batch it ran in must still wait for the new partitions' first records rather
    than go out with whatever the first fetch brought: with the wait counted from
    the call's start it went out empty, or, when the callback ended just before
    the deadline, with one partition's records ahead of the others' older ones."""
    kafka: KafkaConfig = make_kafka(partitions=2)  # type: ignore[operator]
    t = kafka.topics
    assert _interleaved_backlog(kafka, 100) == 300
    wait_s = 3.0  # generous: the first fetches must all land within it
    restored = []

    def slow_restore(parts: list[tuple[str, int]]) -> None:
        time.sleep(1.5 * wait_s)
        restored.extend(parts)

    consumer = GroupConsumer(kafka, client_id="order-test", group_id=f"{kafka.topic_prefix}g",
                             topics=[t.clicks, t.purchases], co_partitioned=True,
                             on_assign=slow_restore, event_time=event_time)
    try:
        for _ in range(60):  # the group join may take several batch waits
            batch = consumer.poll_batch(300, wait_s)
            if restored:
                break
            assert batch == []
    finally:
        consumer.close()
    assert restored, "never assigned"
    assert [event_time(r) for r in batch] == list(range(300))


def test_a_partition_paused_for_running_ahead_is_read_to_its_end_across_rebalances(
        make_kafka: object) -> None:
    """Partition 0 holds only later events, so its queue fills and it is paused; a
    second member joins and leaves (eager rebalances revoke everything). librdkafka
    keeps pause flags across rebalances, so a partition that came back paused would
    never be read again: every partition must still be read to its end."""
    kafka: KafkaConfig = make_kafka(partitions=2)  # type: ignore[operator]
    t = kafka.topics
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 20})
    for partition, base in ((0, 1_000_000), (1, 0)):
        for k in range(3000):
            producer.produce(t.clicks, partition=partition, key=b"u",
                             value=orjson.dumps({"ts": base + k}))
    producer.flush(30)
    ends = {(t.clicks, 0): 2999, (t.clicks, 1): 2999}
    group = f"{kafka.topic_prefix}g"

    def member(name: str) -> GroupConsumer:
        return GroupConsumer(kafka, client_id=name, group_id=group,
                             topics=[t.clicks, t.purchases], co_partitioned=True,
                             event_time=event_time)

    first = member("first")
    last_seen: dict[tuple[str, int], int] = {}
    try:
        for _ in range(20):  # partition 1 drains slowly, partition 0 queues up
            for r in first.poll_batch(50, 0.2):
                last_seen[(r.topic, r.partition)] = r.offset
        # The case under test: without the pause there is nothing to come back paused.
        assert (t.clicks, 0) in first._paused  # noqa: SLF001
        second = member("second")
        try:
            for _ in range(40):
                first.poll_batch(50, 0.1)
                second.poll_batch(50, 0.1)
                if first.assignment and second.assignment:
                    break
            assert first.assignment and second.assignment, "the second member never joined"
        finally:
            second.close()  # leaves the group: everything moves back to `first`
        for _ in range(600):
            for r in first.poll_batch(500, 0.2):
                last_seen[(r.topic, r.partition)] = r.offset
            if all(last_seen.get(p, -1) >= end for p, end in ends.items()):
                break
    finally:
        first.close()
    assert {p: last_seen.get(p, -1) for p in ends} == ends
