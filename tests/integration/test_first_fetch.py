"""Assigned partitions that librdkafka never fetches are noticed (kafka.first_fetch).

On a real broker: every assigned partition, idle ones included, is heard from
soon after its assignment (a record or its end), so the check has nothing to
report in normal operation; and a partition kept from fetching while the
cluster serves it is reported stuck, and the trainer and the scorer exit with
EXIT_STALLED for their supervisor. librdkafka#5586 itself (a NOT_COORDINATOR
answer to the offset fetch) cannot be produced on demand, so a partition
paused at its assignment stands in for it: both are assigned, served by the
cluster, and never fetched.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer
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
        assert len(group.assignment) == 6
    finally:
        group.close()
        requests.close()


def _hold_partition_0(monkeypatch: pytest.MonkeyPatch, topic: str) -> None:
    """Every request consumer pauses `topic`[0] at its first assignment. Assigned in the
    callback rather than by confluent-kafka after it, so the pause lands before
    librdkafka's offset fetch has come back."""
    assigned = RequestConsumer._assigned  # noqa: SLF001
    held: list[bool] = []

    def hold(self: RequestConsumer, raw: Consumer, parts: list[_TP]) -> None:
        if not held and any((tp.topic, tp.partition) == (topic, 0) for tp in parts):
            held.append(True)
            raw.incremental_assign(parts)
            raw.pause([_TP(topic, 0)])
        assigned(self, raw, parts)

    monkeypatch.setattr(RequestConsumer, "_assigned", hold)


def test_a_partition_never_fetched_is_reported_stuck_and_idle_ones_are_not(
        make_kafka: object, monkeypatch: pytest.MonkeyPatch) -> None:
    kafka: KafkaConfig = make_kafka(partitions=2)  # type: ignore[operator]
    topic = kafka.topics.score_requests
    _produce(kafka, topic, 0, 5)
    _hold_partition_0(monkeypatch, topic)
    requests = RequestConsumer(kafka, client_id="ff-stuck", group_id=f"{kafka.topic_prefix}g",
                               topics=[topic])
    requests.silent_after_s = 2.0
    got: list[int] = []
    try:
        def reported() -> list[Partition]:
            got.extend(r.partition for r in requests.poll(100, 0.2))
            return requests.stuck()

        stuck = wait_until(reported, timeout=60, interval=0.1, what="the partition reported")
        assert stuck == [(topic, 0)] and got == []  # partition 1, idle, was heard from
    finally:
        requests.close()


def test_the_scorer_exits_for_a_restart_when_a_request_partition_is_never_fetched(
        make_kafka: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import stream_app.kafka.request_consumer
    from stream_app.scorer import Scorer
    from stream_app.serving import ScorerConfig
    from stream_app.trainer import EXIT_STALLED

    kafka: KafkaConfig = make_kafka(partitions=2)  # type: ignore[operator]
    _hold_partition_0(monkeypatch, kafka.topics.score_requests)
    monkeypatch.setattr(stream_app.kafka.request_consumer, "SILENT_AFTER_S", 2.0)
    cfg = ScorerConfig(device="cpu", metrics_port=0, exit_when_idle=60.0,
                       group_id=f"scorer-{kafka.topic_prefix}")
    assert Scorer(kafka, cfg, stop=threading.Event()).run() == EXIT_STALLED


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
