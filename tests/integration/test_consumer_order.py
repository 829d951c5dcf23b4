"""The trainer's consumer hands out a backlog of several partitions in event-time order."""

from __future__ import annotations

import orjson
from confluent_kafka import Producer

from stream_app.config import KafkaConfig
from stream_app.kafka.consumer import GroupConsumer
from stream_app.trainer.batch import event_time


def test_backlog_of_three_partitions_comes_out_in_event_time_order(
        make_kafka: object) -> None:
    kafka: KafkaConfig = make_kafka(partitions=2)  # type: ignore[operator]
    t = kafka.topics
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 20})
    # Each partition is written whole before the next, as a fetch would hand them out.
    sent = 0
    for topic, partition, first in ((t.clicks, 0, 0), (t.clicks, 1, 1), (t.purchases, 1, 2)):
        for k in range(1500):
            producer.produce(topic, partition=partition, key=b"u",
                             value=orjson.dumps({"ts": first + 3 * k}))
            sent += 1
    producer.flush(30)
    consumer = GroupConsumer(kafka, client_id="order-test", group_id=f"{kafka.topic_prefix}g",
                             topics=[t.clicks, t.purchases], co_partitioned=True,
                             event_time=event_time)
    got = []
    try:
        for _ in range(200):
            got += consumer.poll_batch(400, 5.0)
            if len(got) >= sent:
                break
    finally:
        consumer.close()
    times = [event_time(r) for r in got]
    assert len(times) == sent
    assert times == sorted(times)
    for part in {(r.topic, r.partition) for r in got}:
        offsets = [r.offset for r in got if (r.topic, r.partition) == part]
        assert offsets == list(range(len(offsets)))
