"""A group member is revoked in poll() before close(): revoked inside close(),
confluent-kafka's rebalance callback can block for good (librdkafka#4041) holding
the GIL, which hung a whole test run when a scorer stopped mid-rebalance."""

from __future__ import annotations

from typing import Any

from stream_app.config import KafkaConfig
from stream_app.kafka.records import Partition
from stream_app.kafka.request_consumer import RequestConsumer
from tests.integration.kafka_helpers import wait_until


class _Spy:
    """The real consumer, with a note of when close() begins."""

    def __init__(self, real: Any, events: list[str]) -> None:
        self._real, self._events = real, events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def close(self) -> None:
        self._events.append("close")
        self._real.close()


def test_the_revoke_is_served_before_close(kafka: KafkaConfig) -> None:
    events: list[str] = []

    def revoked(parts: list[Partition]) -> None:
        events.append("revoke")

    consumer = RequestConsumer(kafka, client_id="leave", group_id=f"{kafka.topic_prefix}leave",
                               topics=[kafka.topics.score_requests], on_revoke=revoked)
    wait_until(lambda: consumer.poll(10, 0.2) is not None and consumer._owned,  # noqa: SLF001
               what="an assignment")
    consumer._consumer = _Spy(consumer._consumer, events)  # type: ignore[assignment]  # noqa: SLF001
    consumer.close()
    assert events == ["revoke", "close"]
