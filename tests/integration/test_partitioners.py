"""Where librdkafka itself puts keys, against `kafka.partitioners`; and the trainer's count
of events a producer put elsewhere (misrouted), which it still learns."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from stream_app.codec import encode_event
from stream_app.config import KafkaConfig
from stream_app.events import Event, EventKind
from stream_app.kafka.partitioners import consistent_random, murmur2_random
from stream_app.trainer import TrainerConfig, make_trainer
from tests.integration.test_trainer import LEARNER

PARTITIONS = 6


@pytest.mark.parametrize(("partitioner", "predict"), [
    ("consistent_random", consistent_random), ("murmur2_random", murmur2_random)])
def test_our_partitioners_put_keys_where_librdkafka_does(
        make_kafka: Callable[..., KafkaConfig], partitioner: str,
        predict: Callable[[bytes, int], int]) -> None:
    kafka = make_kafka(partitions=PARTITIONS)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                         "partitioner": partitioner})
    landed: dict[bytes, int] = {}

    def delivered(err: object, msg: object) -> None:
        assert err is None, err
        landed[msg.key()] = msg.partition()  # type: ignore[attr-defined]

    keys = [f"user-{n}".encode() for n in range(60)] + [b"21", b"foobar", "ü".encode()]
    for key in keys:
        producer.produce(kafka.topics.clicks, key=key, value=b"{}", on_delivery=delivered)
    assert producer.flush(30) == 0
    assert landed == {key: predict(key, PARTITIONS) for key in keys}
    assert len(set(landed.values())) > 1  # the keys spread: a constant would not pass


def test_misrouted_events_are_counted_logged_and_learned(
        kafka: KafkaConfig, caplog: pytest.LogCaptureFixture) -> None:
    """A producer with a partitioner of its own (here: partitions given explicitly) puts
    some users where neither common partitioner would."""
    n = 3
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    wrong = 0
    for i in range(30):
        user = f"m{i}"
        key = user.encode()
        right = {consistent_random(key, n), murmur2_random(key, n)}
        off = [p for p in range(n) if p not in right]
        partition = off[0] if off and i % 2 else consistent_random(key, n)
        wrong += partition not in right
        event = Event(event_id=f"e{i}", user_id=user, item_id=f"i{i % 5}",
                      ts=1_700_000_000_000 + i, kind=EventKind.CLICK)
        producer.produce(kafka.topics.clicks, key=key, value=encode_event(event),
                         partition=partition)
    assert producer.flush(30) == 0
    assert wrong >= 5

    trainer = make_trainer(kafka, TrainerConfig(exit_when_idle=3.0, metrics_port=0), LEARNER)
    with caplog.at_level(logging.WARNING, logger="stream_app.trainer.observe"):
        assert trainer.run() == 0
    sample = trainer.metrics.registry.get_sample_value
    assert sample("stream_app_events_misrouted_total", {"topic": kafka.topics.clicks}) == wrong
    assert sample("stream_app_events_misrouted_total", {"topic": kafka.topics.purchases}) == 0
    assert sample("stream_app_events_total", {"topic": kafka.topics.clicks,
                                              "outcome": "applied"}) == 30
    said = [r.getMessage() for r in caplog.records if "misrouted events on" in r.getMessage()]
    assert len(said) == 1, said  # once per topic per 30 s, not once per event
