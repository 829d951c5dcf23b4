"""`committed_within`: the takeover's wait for a previous owner's transaction beats."""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as _TP

from stream_app.kafka import consumer as consumer_module
from stream_app.kafka.consumer import committed_within


class Unstable:
    """`committed` times out (offsets held by an open transaction) `times` times."""

    def __init__(self, times: int, error: int = KafkaError._TIMED_OUT) -> None:  # noqa: SLF001
        self.times, self.error, self.asked = times, error, []

    def committed(self, parts: list[_TP], timeout: float) -> list[_TP]:
        self.asked.append(timeout)
        if len(self.asked) <= self.times:
            raise KafkaException(KafkaError(self.error))
        return [_TP(p.topic, p.partition, 7) for p in parts]


def test_each_wait_is_short_and_followed_by_a_beat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "SETTLE_STEP_S", 0.5)
    beats: list[Any] = []
    fake = Unstable(times=3)
    got = committed_within(fake, [_TP("t", 0)], 60.0, lambda: beats.append(1))  # type: ignore[arg-type]
    assert [tp.offset for tp in got] == [7]
    assert len(beats) == 3 and max(fake.asked) == 0.5


class SlowUnstable(Unstable):
    """Each ask waits its whole timeout, as librdkafka's does while offsets are unstable."""

    def committed(self, parts: list[_TP], timeout: float) -> list[_TP]:
        time.sleep(timeout)
        return super().committed(parts, timeout)


def test_the_whole_timeout_still_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "SETTLE_STEP_S", 0.05)
    fake = SlowUnstable(times=10**6)
    with pytest.raises(KafkaException):
        committed_within(fake, [_TP("t", 0)], 0.3, lambda: None)  # type: ignore[arg-type]
    assert 3 <= len(fake.asked) <= 6  # several short asks (at least 0.1 s each), then done


def test_an_error_other_than_a_timeout_is_raised_at_once() -> None:
    fake = Unstable(times=1, error=KafkaError._TRANSPORT)  # noqa: SLF001
    with pytest.raises(KafkaException):
        committed_within(fake, [_TP("t", 0)], 60.0, lambda: None)  # type: ignore[arg-type]
    assert len(fake.asked) == 1
