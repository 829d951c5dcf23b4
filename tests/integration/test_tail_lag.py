"""The scorer's `embeddings` tail reports its backlog from the start, before any fetch."""

from __future__ import annotations

from confluent_kafka import Producer
from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

from stream_app.config import KafkaConfig
from stream_app.kafka.admin import admin_client
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


def test_partitions_added_after_open_are_read_from_their_beginning(kafka: KafkaConfig) -> None:
    """They were never read until a restart: rows keyed to them missing from the table."""
    admin = admin_client(kafka)
    topic = kafka.topics.embeddings
    with TailReader(kafka, topic, client_id="tail-grow") as tail:
        tail.open()
        assert tail.grow() == []
        admin.create_partitions([NewPartitions(topic, 4)])[topic].result()
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
        wait_until(lambda: len(producer.list_topics(topic, timeout=5).topics[topic].partitions)
                   == 4, what="the new partition in the metadata")
        producer.produce(topic, key=b"item:new", value=b"{}", partition=3)
        assert producer.flush(30) == 0
        wait_until(lambda: tail.grow() == [3], timeout=30, what="the tail to see partition 3")
        seen: list[bytes | None] = []
        wait_until(lambda: bool(seen.extend(r.key for r in tail.poll(100, 0.2).records))
                   or seen == [b"item:new"], timeout=30, what="the row in partition 3")
        assert 3 in tail.lag()


def test_a_partition_that_holds_only_aborted_rows_shows_no_lag_once_its_end_is_heard(
        kafka: KafkaConfig) -> None:
    """read_committed delivers none of them. A review feared the position would then stay
    unknown and the lag count from the log's start for good (ScorerNotReady's runbook
    reads it); librdkafka moves the position past them, which this holds it to."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                         "transactional.id": f"{kafka.topic_prefix}tail-aborts"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for k in range(5):
        producer.produce(kafka.topics.embeddings, key=b"item:%d" % k, value=b"{}", partition=0)
    assert producer.flush(30) == 0  # on the broker, or the abort purges them unsent
    producer.abort_transaction(30)
    with TailReader(kafka, kafka.topics.embeddings, client_id="tail-aborts") as tail:
        assert tail.open()[0] == 6  # five rows and the abort marker
        heard: dict[int, int] = {}

        def caught_up() -> bool:
            batch = tail.poll(100, 0.2)
            assert not batch.records
            heard.update(batch.eof)
            return heard.get(0) == 6 and tail.lag() == {0: 0, 1: 0, 2: 0}

        wait_until(caught_up, timeout=30, what="the tail to hear partition 0's end")
