"""`committed_within` and `settle`: the takeover's wait for a previous owner's transaction
beats, outlasts a coordinator moving, and stops the trainer on an error it cannot outlast."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as _TP

from stream_app.kafka import settle as settle_module
from stream_app.kafka.consumer import GroupConsumer
from stream_app.kafka.exceptions import BrokerError, KafkaEdgeError
from stream_app.kafka.settle import committed_within
from tests.unit.kafka.fake_clock import FakeClock


class Unstable:
    """`committed` times out (offsets held by an open transaction) `times` times; with
    `per_partition`, it answers at once with the error on each partition instead."""

    def __init__(self, times: int, error: int = KafkaError._TIMED_OUT,  # noqa: SLF001
                 *, per_partition: bool = False) -> None:
        self.times, self.error, self.per_partition = times, error, per_partition
        self.asked: list[float] = []

    def committed(self, parts: list[_TP], timeout: float) -> list[_TP]:
        self.asked.append(timeout)
        if len(self.asked) > self.times:
            return [_TP(p.topic, p.partition, 7) for p in parts]
        if not self.per_partition:
            raise KafkaException(KafkaError(self.error))
        # librdkafka's TopicPartition takes no error from Python: a stand-in with one
        return [SimpleNamespace(topic=p.topic, partition=p.partition, offset=-1001,  # type: ignore[misc]
                                error=KafkaError(self.error)) for p in parts]


def test_each_wait_is_short_and_followed_by_a_beat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settle_module, "SETTLE_STEP_S", 0.5)
    beats: list[Any] = []
    fake = Unstable(times=3)
    got = committed_within(fake, [_TP("t", 0)], 60.0, lambda: beats.append(1))  # type: ignore[arg-type]
    assert [tp.offset for tp in got] == [7]
    assert len(beats) == 3 and max(fake.asked) == 0.5


class SlowUnstable(Unstable):
    """Each ask waits its whole timeout, as librdkafka's does while offsets are unstable."""

    def __init__(self, clock: FakeClock, times: int) -> None:
        super().__init__(times)
        self.clock = clock

    def committed(self, parts: list[_TP], timeout: float) -> list[_TP]:
        self.clock.sleep(timeout)
        return super().committed(parts, timeout)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(settle_module, "time", fake)
    return fake


def test_the_whole_timeout_still_ends_the_wait(monkeypatch: pytest.MonkeyPatch,
                                               clock: FakeClock) -> None:
    monkeypatch.setattr(settle_module, "SETTLE_STEP_S", 0.05)
    fake = SlowUnstable(clock, times=10**6)
    with pytest.raises(KafkaException):
        committed_within(fake, [_TP("t", 0)], 0.3, lambda: None)  # type: ignore[arg-type]
    assert fake.asked == [0.1] * 4  # short asks (at least 0.1 s each) past the deadline


def test_an_error_a_wait_cannot_outlast_is_raised_at_once() -> None:
    fake = Unstable(times=1, error=KafkaError.GROUP_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        committed_within(fake, [_TP("t", 0)], 60.0, lambda: None)  # type: ignore[arg-type]
    assert len(fake.asked) == 1


@pytest.mark.parametrize("per_partition", [False, True])
@pytest.mark.parametrize("error", [KafkaError.NOT_COORDINATOR,
                                   KafkaError._TRANSPORT])  # noqa: SLF001
def test_a_coordinator_moving_is_asked_again(monkeypatch: pytest.MonkeyPatch, error: int,
                                             per_partition: bool) -> None:
    monkeypatch.setattr(settle_module, "SETTLE_STEP_S", 0.5)
    fake = Unstable(times=2, error=error, per_partition=per_partition)
    got = committed_within(fake, [_TP("t", 0)], 60.0, lambda: None)  # type: ignore[arg-type]
    assert [(tp.offset, tp.error) for tp in got] == [(7, None)] and len(fake.asked) == 3


def settle(fake: Unstable, timeout_s: float = 60.0) -> None:
    """`GroupConsumer.settle` over `fake` in place of librdkafka's consumer."""
    GroupConsumer.settle(SimpleNamespace(_consumer=fake), [("t", 0)],  # type: ignore[arg-type]
                         timeout_s=timeout_s)


@pytest.mark.parametrize("per_partition", [False, True])
@pytest.mark.parametrize(("error", "raised"), [
    (KafkaError.INVALID_GROUP_ID, KafkaEdgeError),  # exit 75 through `transient`
    (KafkaError.GROUP_AUTHORIZATION_FAILED, BrokerError),  # exit 2: grant access first
])
def test_settle_stops_on_an_error_it_cannot_outlast(per_partition: bool, error: int,
                                                    raised: type[Exception]) -> None:
    """Going on would restore without a previous owner's last rows."""
    fake = Unstable(times=10**6, error=error, per_partition=per_partition)
    with pytest.raises(raised, match="committed offsets") as info:
        settle(fake)
    assert raised is BrokerError or not isinstance(info.value, BrokerError)


def test_settle_leaves_a_transaction_that_outlasts_its_wait(
        monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    """By then the broker has aborted a dead owner's transaction: logged, and the trainer
    goes on."""
    monkeypatch.setattr(settle_module, "SETTLE_STEP_S", 0.05)
    fake = SlowUnstable(clock, times=10**6)
    settle(fake, timeout_s=0.3)
    assert fake.asked == [0.1] * 4
