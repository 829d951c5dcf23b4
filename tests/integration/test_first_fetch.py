"""Assigned partitions that librdkafka never fetches are noticed (kafka.first_fetch).

On a real broker: every assigned partition, idle ones included, is heard from
soon after its assignment (a record or its end), so the check has nothing to
report in normal operation; and a partition kept from fetching is assigned
again by the scorer's request consumer, after which its requests arrive.
librdkafka#5586 itself (a NOT_COORDINATOR answer to the offset fetch) cannot
be produced on demand, so a partition paused at its assignment stands in for
it: both are assigned and never fetched.
"""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Producer
from confluent_kafka import TopicPartition as _TP

from stream_app.config import KafkaConfig
from stream_app.kafka.consumer import GroupConsumer
from stream_app.kafka.records import Partition
from stream_app.kafka.request_consumer import RequestConsumer
from tests.integration.kafka_helpers import wait_until


def _produce(kafka: KafkaConfig, topic: str, partition: int, n: int) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for k in range(n):
        producer.produce(topic, partition=partition, key=b"u", value=b"%d" % k)
    producer.flush(30)


def test_every_assigned_partition_is_heard_from_idle_ones_included(
        make_kafka: object) -> None:
    kafka: KafkaConfig = make_kafka(partitions=3)  # type: ignore[operator]
    t = kafka.topics
    _produce(kafka, t.clicks, 1, 10)
    _produce(kafka, t.score_requests, 2, 3)
    group = GroupConsumer(kafka, client_id="ff-group", group_id=f"{kafka.topic_prefix}g1",
                          topics=[t.clicks, t.purchases], co_partitioned=True)
    requests = RequestConsumer(kafka, client_id="ff-req", group_id=f"{kafka.topic_prefix}g2",
                               topics=[t.score_requests])
    try:
        def all_heard() -> bool:
            group.poll_batch(100, 0.2)
            requests.poll(100, 0.2)
            return bool(group.assignment) and not group.silent(0) and not requests.silent(0)

        wait_until(all_heard, timeout=60, interval=0.1, what="every partition to be heard from")
        assert len(group.assignment) == 6 and requests.restarts == 0
    finally:
        group.close()
        requests.close()


def test_a_partition_never_fetched_is_assigned_again_and_its_requests_arrive(
        make_kafka: object, caplog: pytest.LogCaptureFixture) -> None:
    kafka: KafkaConfig = make_kafka(partitions=2)  # type: ignore[operator]
    topic = kafka.topics.score_requests
    _produce(kafka, topic, 0, 5)
    held: list[Partition] = []

    def hold_partition_0(parts: list[Partition]) -> None:
        if (topic, 0) in parts and not held:  # the first assignment only
            held.append((topic, 0))
            # Assigned here rather than by confluent-kafka after the callback, so
            # the pause lands before librdkafka's offset fetch has come back.
            raw = requests._consumer  # noqa: SLF001
            raw.incremental_assign([_TP(t, p) for t, p in parts])
            raw.pause([_TP(topic, 0)])

    requests = RequestConsumer(kafka, client_id="ff-stuck", group_id=f"{kafka.topic_prefix}g",
                               topics=[topic], on_assign=hold_partition_0)
    requests.silent_after_s = 2.0
    got: list[int] = []
    try:
        with caplog.at_level(logging.WARNING, logger="stream_app.kafka.request_consumer"):
            def restarted() -> bool:
                got.extend(r.partition for r in requests.poll(100, 0.2))
                return requests.restarts > 0

            wait_until(restarted, timeout=60, interval=0.1, what="the silent partition's restart")
        assert held and got == [] and "never fetched" in caplog.text
        # Pause flags survive an assignment in librdkafka; lifted, the partition
        # that was assigned again is fetched from its committed offset (none:
        # the earliest) and its requests arrive.
        requests._consumer.resume([_TP(topic, 0)])  # noqa: SLF001
        deadline = time.monotonic() + 60
        while len(got) < 5 and time.monotonic() < deadline:
            got.extend(r.partition for r in requests.poll(100, 0.2))
        assert got == [0] * 5
        assert not requests.silent(0)
    finally:
        requests.close()


def test_the_trainer_exits_for_a_restart_when_a_partition_is_never_fetched(
        make_kafka: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's assignment is eager (co-partitioning), where only assigning every
    partition anew would cure one; it exits with EXIT_STALLED for its supervisor."""
    from stream_app.core import LearnerConfig
    from stream_app.trainer import EXIT_STALLED, Trainer, TrainerConfig, make_trainer

    kafka: KafkaConfig = make_kafka(partitions=2)  # type: ignore[operator]
    stuck = _TP(kafka.topics.clicks, 0)
    on_assign = Trainer._on_assign  # noqa: SLF001

    def hold_clicks_0(self: Trainer, consumer: GroupConsumer | None,
                      parts: list[Partition]) -> None:
        assert consumer is not None
        consumer.raw.assign([_TP(t, p) for t, p in parts])  # eager: the whole assignment
        consumer.raw.pause([stuck])
        on_assign(self, consumer, parts)

    monkeypatch.setattr(Trainer, "_on_assign", hold_clicks_0)
    cfg = TrainerConfig(batch_max=100, batch_wait_ms=100, metrics_port=0, stall_timeout_s=3.0,
                        exit_when_idle=60.0)
    trainer = make_trainer(kafka, cfg, LearnerConfig(dim=8, num_sampled_negatives=16))
    assert trainer.run() == EXIT_STALLED  # exit_when_idle would have returned 0
