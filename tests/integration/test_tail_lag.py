"""The scorer's `embeddings` tail reports its backlog from the start, before any fetch."""

from __future__ import annotations

from confluent_kafka import Producer

from stream_app.config import KafkaConfig
from stream_app.kafka.tail import TailReader
from tests.integration.kafka_helpers import wait_until


def test_lag_counts_a_partition_not_fetched_yet_then_falls_to_zero(kafka: KafkaConfig) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for k in range(5):
        producer.produce(kafka.topics.embeddings, key=b"item:%d" % k, value=b"{}", partition=0)
    assert producer.flush(30) == 0
    with TailReader(kafka, kafka.topics.embeddings, client_id="tail-lag") as tail:
        ends = tail.open()
        assert ends[0] == 5
        assert tail.lag() == {0: 5, 1: 0, 2: 0}  # nothing fetched yet: the whole backlog
        read = 0

        def caught_up() -> bool:
            nonlocal read
            read += len(tail.poll(100, 0.2).records)
            return read == 5 and tail.lag() == {0: 0, 1: 0, 2: 0}

        wait_until(caught_up, timeout=30, what="the tail read to the end")
