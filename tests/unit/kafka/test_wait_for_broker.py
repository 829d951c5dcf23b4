"""`wait_for_broker`'s message tells a dead port from a listener that does not speak
Kafka as configured (a SASL or SSL listener reached in plaintext): the first said "start
a broker", the second said the same and sent the operator the wrong way."""

from __future__ import annotations

import socket

import pytest

from stream_app.kafka.admin import wait_for_broker
from stream_app.kafka.exceptions import BrokerUnavailable


def test_a_listener_that_does_not_answer_as_kafka_points_at_the_security_settings() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(BrokerUnavailable, match="security.protocol, SASL or SSL"):
            wait_for_broker(f"127.0.0.1:{port}", timeout_s=2)


def test_a_dead_port_says_to_start_a_broker() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening
        with pytest.raises(BrokerUnavailable, match="stream-app broker start"):
            wait_for_broker(f"127.0.0.1:{port}", timeout_s=2)
