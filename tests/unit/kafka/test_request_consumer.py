"""`RequestConsumer` across a rebalance that runs between its `poll()` and `consume()`:
a stand-in consumer plays librdkafka's part (no broker can make that interleaving
happen on demand)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from stream_app.kafka import request_consumer
from stream_app.kafka.request_consumer import RequestConsumer
from tests.unit.kafka.stand_ins import NO_BROKER, stand_in

TOPIC = "score-requests"
Callback = Callable[[Any, list[TopicPartition]], None]


class _Msg:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"u1"

    def value(self) -> bytes:
        return b"{}"

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def headers(self) -> None:
        return None


class _Consumer:
    """`poll` hands out request 0@15; the next `consume` first revokes partition 0 (a
    cooperative rebalance), then returns 1@3."""

    def __init__(self) -> None:
        self.callbacks: dict[str, Callback] = {}
        self.commits: list[list[tuple[int, int]]] = []

    def subscribe(self, _topics: list[str], **callbacks: Callback) -> None:
        self.callbacks = callbacks

    def poll(self, _timeout: float) -> _Msg:
        return _Msg(0, 15)

    def consume(self, _n: int, timeout: float) -> list[_Msg]:
        self.callbacks["on_revoke"](self, [TopicPartition(TOPIC, 0)])
        return [_Msg(1, 3)]

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> _Consumer:
    return stand_in(monkeypatch, request_consumer, "make_consumer", _Consumer())


def test_a_request_of_a_partition_revoked_after_poll_is_neither_answered_nor_committed(
        fake: _Consumer) -> None:
    revoked: list[list[tuple[str, int]]] = []
    rc = RequestConsumer(NO_BROKER, client_id="c",
                         group_id="g", topics=[TOPIC], on_revoke=revoked.append)
    fake.callbacks["on_assign"](fake, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    got = rc.poll(10, 1.0)
    assert [(r.partition, r.offset) for r in got] == [(1, 3)]
    assert revoked == [[(TOPIC, 0)]]
    rc.commit({(TOPIC, 0): 16, (TOPIC, 1): 4})
    assert fake.commits == [[(1, 4)]]  # partition 0 is its new owner's to commit


def test_a_synchronous_commit_sends_every_latest_offset_again(fake: _Consumer) -> None:
    """A failed asynchronous commit is reported to nobody: the commit on revoke repeats it."""
    rc = RequestConsumer(NO_BROKER, client_id="c",
                         group_id="g", topics=[TOPIC])
    fake.callbacks["on_assign"](fake, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
    rc.commit({(TOPIC, 0): 16})
    rc.commit({(TOPIC, 1): 4})
    rc.commit({}, asynchronous=False)
    assert fake.commits == [[(0, 16)], [(1, 4)], [(0, 16), (1, 4)]]
