"""`EventProducer` stopped by an exception: a short flush, the rest dropped and counted, and
the exception that stopped it is the one raised (a stand-in for librdkafka's producer)."""

from __future__ import annotations

import pytest

from stream_app.kafka import produce
from stream_app.kafka.produce import DeliveryError, EventProducer
from tests.unit.kafka.stand_ins import NO_BROKER, stand_in


class _Stuck:
    """A producer whose broker is gone: three records stay queued whatever the wait."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.queued = 3

    def flush(self, timeout: float) -> int:
        self.calls.append(f"flush {timeout:g}")
        return self.queued

    def purge(self) -> None:
        self.calls.append("purge")
        self.queued = 0


@pytest.fixture
def stuck(monkeypatch: pytest.MonkeyPatch) -> _Stuck:
    return stand_in(monkeypatch, produce, "make_producer", _Stuck())


def test_an_interrupted_producer_drops_what_is_left_and_keeps_the_interrupt(
        stuck: _Stuck) -> None:
    producer = EventProducer(NO_BROKER)
    with pytest.raises(KeyboardInterrupt), producer:
        raise KeyboardInterrupt
    assert producer.dropped == 3
    assert stuck.calls == ["flush 5", "purge", "flush 0"]


def test_a_producer_closed_normally_reports_what_it_could_not_deliver(stuck: _Stuck) -> None:
    with pytest.raises(DeliveryError, match="3 record"), \
            EventProducer(NO_BROKER):
        pass


class _Interrupted(_Stuck):
    """Ctrl-C arrives during the final flush."""

    def flush(self, timeout: float) -> int:
        super().flush(timeout)
        if timeout == 60:
            raise KeyboardInterrupt
        return self.queued


def test_an_interrupt_in_the_final_flush_still_counts_what_it_drops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """close() was interrupted before abandon() ran: 0 dropped was reported for 3 lost."""
    fake = stand_in(monkeypatch, produce, "make_producer", _Interrupted())
    producer = EventProducer(NO_BROKER)
    with pytest.raises(KeyboardInterrupt), producer:
        pass
    assert producer.dropped == 3
    assert fake.calls == ["flush 60", "flush 0", "purge", "flush 0"]
