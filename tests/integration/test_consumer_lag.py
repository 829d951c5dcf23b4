"""The lag gauge of a member that starts at committed offsets with nothing new to read."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as _TP

from stream_app.config import KafkaConfig
from stream_app.kafka import consumer as consumer_module
from stream_app.kafka.consumer import GroupConsumer
from stream_app.kafka.records import Partition
from stream_app.kafka.request_consumer import RequestConsumer
from tests.integration.kafka_helpers import wait_until

PER_PARTITION = 40


def _backlog_committed_up_to(kafka: KafkaConfig, topic: str, group: str,
                             committed: int) -> None:
    """PER_PARTITION records on each of 3 partitions; the group's offsets at `committed`
    on partitions 0 and 1 (read before a restart), and none on partition 2 (a fresh
    backlog, read from its start)."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for partition in range(3):
        for n in range(PER_PARTITION):
            producer.produce(topic, partition=partition, key=b"u", value=b"%d" % n)
    assert producer.flush(30) == 0
    committer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        committer.commit(offsets=[_TP(topic, p, committed) for p in (0, 1)],
                         asynchronous=False)
    finally:
        committer.close()


def _lag_once_idle(poll: Callable[[], int], lag: Callable[[], dict[Partition, int]],
                   topic: str) -> dict[int, int]:
    """Poll until nothing comes for 3 s in a row (every partition's end heard), then the lag."""
    deadline = time.monotonic() + 60
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if poll():
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 3:
            break
    return {p: n for (t, p), n in lag().items() if t == topic}


def test_a_member_caught_up_at_its_committed_offsets_shows_no_lag(
        make_kafka: Callable[..., KafkaConfig]) -> None:
    """A restarted trainer or scorer with nothing new to read showed each idle partition's
    whole log as lag (its position is unknown until a record arrives), so
    ConsumerLagGrowing's runbook sent the operator after a crash loop that was not there."""
    kafka = make_kafka(partitions=3)
    clicks, group = kafka.topics.clicks, f"{kafka.topic_prefix}lag"
    _backlog_committed_up_to(kafka, clicks, group, committed=PER_PARTITION)
    trainer_side = GroupConsumer(kafka, client_id="lag-test", group_id=group, topics=[clicks])
    try:
        got: list[int] = []

        def poll() -> int:
            n = len(trainer_side.poll_batch(100, 0.5))
            got.append(n)
            return n

        lag = _lag_once_idle(poll, trainer_side.lag, clicks)
    finally:
        trainer_side.close()
    # Partition 2 had no committed offset: it was read from the start, and is caught up too.
    assert sum(got) == PER_PARTITION
    assert lag == {0: 0, 1: 0, 2: 0}


def test_a_scorer_member_caught_up_at_its_committed_offsets_shows_no_lag(
        make_kafka: Callable[..., KafkaConfig]) -> None:
    kafka = make_kafka(partitions=3)
    requests, group = kafka.topics.score_requests, f"{kafka.topic_prefix}lag"
    _backlog_committed_up_to(kafka, requests, group, committed=PER_PARTITION)
    scorer_side = RequestConsumer(kafka, client_id="lag-test", group_id=group,
                                  topics=[requests])
    try:
        got: list[int] = []

        def poll() -> int:
            records = scorer_side.poll(100, 0.5)
            got.append(len(records))
            if records:  # answered: commit them, as the scorer does
                ends: dict[Partition, int] = {}
                for r in records:
                    ends[(r.topic, r.partition)] = r.offset + 1
                scorer_side.commit(ends, asynchronous=False)
            return len(records)

        lag = _lag_once_idle(poll, scorer_side.lag, requests)
    finally:
        scorer_side.close()
    assert sum(got) == PER_PARTITION
    assert lag == {0: 0, 1: 0, 2: 0}


def test_a_paused_partition_shows_the_backlog_growing_behind_it(
        make_kafka: Callable[..., KafkaConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka does not fetch a paused partition, so its cached watermark, and the lag
    gauge with it, froze at the pause while its backlog grew (consumer review)."""
    monkeypatch.setattr(consumer_module, "PAUSED_ENDS_EVERY_S", 0.0)
    kafka = make_kafka(partitions=1)
    clicks, group = kafka.topics.clicks, f"{kafka.topic_prefix}paused"
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})

    def send(n: int) -> None:
        for i in range(n):
            producer.produce(clicks, partition=0, key=b"u", value=b"%d" % i)
        assert producer.flush(30) == 0

    send(PER_PARTITION)
    member = GroupConsumer(kafka, client_id="paused-test", group_id=group, topics=[clicks])
    try:
        got: list[int] = []

        def poll() -> int:
            got.append(len(member.poll_batch(100, 0.5)))
            return got[-1]

        assert wait_until(poll, timeout=30)  # joined, and reading
        assert _lag_once_idle(poll, member.lag, clicks) == {0: 0}
        assert sum(got) == PER_PARTITION
        # Paused as `_bound_queues` pauses a partition queued far ahead of the others.
        member.raw.pause([_TP(clicks, 0)])
        member._paused.add((clicks, 0))  # noqa: SLF001
        time.sleep(1.0)  # a fetch in flight at the pause (a 0.5 s long poll) still answers
        send(100)
        assert wait_until(lambda: member.lag()[(clicks, 0)] == 100, timeout=10)
    finally:
        member.close()
