"""`ReplyReader` reads partitions added to the reply topic after it opened."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

import stream_app.kafka.reply_reader as reply_reader
from stream_app.config import KafkaConfig
from stream_app.kafka.admin import admin_client
from stream_app.kafka.reply_reader import ReplyReader
from tests.integration.kafka_helpers import wait_until


def test_an_answer_in_a_partition_added_after_open_is_read(
        kafka: KafkaConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions were fixed at `open()`: a long-lived ScoreClient timed out on every
    answer keyed to a partition added later."""
    monkeypatch.setattr(reply_reader, "GROW_CHECK_S", 0.5)
    topic = kafka.topics.predictions
    with ReplyReader(kafka, topic, client_id="reply-grow", group_id="reply-grow") as reader:
        reader.open()
        admin = admin_client(kafka)  # alive until the future resolves
        admin.create_partitions([NewPartitions(topic, 4)])[topic].result()
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
        wait_until(lambda: len(producer.list_topics(topic, timeout=5).topics[topic].partitions)
                   == 4, what="the new partition in the metadata")
        producer.produce(topic, key=b"r-new", value=b"{}", partition=3)
        producer.produce(topic, key=b"r-old", value=b"{}", partition=0)
        assert producer.flush(30) == 0
        seen: list[bytes | None] = []

        def both() -> bool:
            seen.extend(r.key for r in reader.poll(100, 0.2))
            return sorted(k or b"" for k in seen) == [b"r-new", b"r-old"]

        wait_until(both, timeout=30, what="both answers")
