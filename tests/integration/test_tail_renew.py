"""`TailReader.renew`: a new client goes on from each partition's position."""

from __future__ import annotations

from confluent_kafka import Producer

from stream_app.config import KafkaConfig
from stream_app.kafka.tail import TailReader
from tests.integration.kafka_helpers import wait_until


def _produce(kafka: KafkaConfig, keys: list[tuple[int, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for partition, key in keys:
        producer.produce(kafka.topics.embeddings, key=key, value=b"{}", partition=partition)
    assert producer.flush(30) == 0


def _read(tail: TailReader, n: int) -> list[tuple[int, bytes | None]]:
    seen: list[tuple[int, bytes | None]] = []

    def enough() -> bool:
        seen.extend((r.partition, r.key) for r in tail.poll(100, 0.2).records)
        return len(seen) >= n

    wait_until(enough, timeout=30, what=f"{n} rows")
    return seen


def test_a_renewed_tail_reads_on_from_where_it_was_neither_again_nor_past(
        kafka: KafkaConfig) -> None:
    """Renewal from the beginning would read everything twice, from the end would miss rows
    written meanwhile. Renewed twice with nothing read between (a long outage), the
    second client must not start over: a new client's `position()` is unknown until
    a partition's next record. Partition 2 was never read, so it starts at its
    beginning."""
    _produce(kafka, [(0, b"item:a"), (0, b"item:b"), (1, b"item:c")])
    with TailReader(kafka, kafka.topics.embeddings, client_id="tail-renew") as tail:
        tail.open()
        assert sorted(_read(tail, 3)) == [(0, b"item:a"), (0, b"item:b"), (1, b"item:c")]
        tail.failed_checks = 2
        tail.renew()
        assert tail.failed_checks == 0
        tail.renew()
        _produce(kafka, [(0, b"item:d"), (1, b"item:e"), (2, b"item:f")])
        assert sorted(_read(tail, 3)) == [(0, b"item:d"), (1, b"item:e"), (2, b"item:f")]
        assert tail.poll(100, 1.0).records == []
        tail.renew()  # a quiet partition: nothing new since the last renewal
        assert tail.poll(100, 2.0).records == []
        assert tail.lag() == {0: 0, 1: 0, 2: 0}
