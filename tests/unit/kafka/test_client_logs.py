"""librdkafka's own log lines reach Python logging, a kind at most once per 30 s per
client: left on stderr, a trainer whose broker was down logged 1,400 lines a minute (a
reconnect every 100 ms per client). No broker here: a port nobody listens on refuses
every connect, which is the outage."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from stream_app.config import KafkaConfig
from stream_app.kafka.clients import make_consumer, make_producer


def _refusals(caplog: pytest.LogCaptureFixture, client: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "stream_app.librdkafka" and client in r.getMessage()
            and "Connection refused" in r.getMessage()]


def test_a_refused_broker_is_logged_once_per_window_per_client(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    dead = socket.socket()  # bound for the whole test, never listening: connects are refused
    dead.bind(("127.0.0.1", 0))
    kafka = KafkaConfig(bootstrap_servers=f"127.0.0.1:{dead.getsockname()[1]}")
    consumer = make_consumer(kafka, "logs-consumer", "logs-group")
    producer = make_producer(kafka, "logs-producer")
    try:
        consumer.subscribe(["t"])
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (
                _refusals(caplog, "logs-consumer") and _refusals(caplog, "logs-producer")):
            consumer.consume(100, 0.1)
            producer.poll(0.1)
        for _ in range(20):  # 2 s more: ~20 more refusals per client, all within the window
            consumer.consume(100, 0.05)
            producer.poll(0.05)
    finally:
        consumer.close()
        dead.close()
    said = _refusals(caplog, "logs-consumer")
    assert len(said) == 1, said
    assert len(_refusals(caplog, "logs-producer")) == 1  # one client's lines hide no other's
    assert said[0].startswith("librdkafka FAIL")
    assert any(r.levelno == logging.ERROR for r in caplog.records
               if r.name == "stream_app.librdkafka")


def test_a_client_given_no_logger_keeps_librdkafka_s_own_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    """`ScoreClient`'s clients pass logger=None: a program may leave them idle, and
    forwarded lines would wait in their queues for a poll."""
    caplog.set_level(logging.INFO)
    producer = make_producer(KafkaConfig(bootstrap_servers="127.0.0.1:9"), "quiet", logger=None)
    producer.poll(1.0)
    assert not [r for r in caplog.records if r.name == "stream_app.librdkafka"]
