"""`first_fetch.stuck`: silence counts only while the cluster can serve the partition."""

from __future__ import annotations

import time
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as _TP

from stream_app.kafka.first_fetch import FirstFetch, stuck


class _Meta:
    """What `list_topics(topic).topics.get(topic).partitions.get(p).leader` reads."""

    def __init__(self, leaders: dict[int, int]) -> None:
        self.partitions = {p: type("P", (), {"leader": lead})() for p, lead in leaders.items()}


class _Cluster:
    """Stand-in for the two questions `stuck` asks the broker."""

    def __init__(self, *, leaders: dict[int, int], away: bool = False) -> None:
        self.leaders, self.away, self.asked = leaders, away, 0

    def committed(self, parts: list[_TP], timeout: float) -> list[_TP]:
        self.asked += 1
        if self.away:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))  # noqa: SLF001
        return [_TP(tp.topic, tp.partition, 0) for tp in parts]

    def list_topics(self, topic: str, timeout: float) -> Any:
        return type("M", (), {"topics": {topic: _Meta(self.leaders)}})()


def test_only_partitions_the_cluster_serves_are_stuck_and_the_rest_wait_again() -> None:
    ff = FirstFetch()
    ff.assigned([("t", 0), ("t", 1)], now=0.0)  # long ago (monotonic clock)
    cluster = _Cluster(leaders={0: 1, 1: -1})  # partition 1: no leader (an election)
    asked_at = time.monotonic()  # the partition's wait restarts no earlier than this
    assert stuck(ff, cast(Any, cluster), after_s=1.0) == [("t", 0)]
    assert ff.silent(now=float("inf"), after_s=0) == [("t", 0), ("t", 1)]
    # Partition 1's wait started again (at `stuck`'s time.monotonic()); partition 0's did not.
    assert ff.silent(now=asked_at + 0.5, after_s=1.0) == [("t", 0)]


def test_nothing_is_stuck_while_the_broker_is_away_and_nothing_is_asked_when_all_heard() -> None:
    ff = FirstFetch()
    ff.assigned([("t", 0)], now=0.0)
    away = _Cluster(leaders={0: 1}, away=True)
    assert stuck(ff, cast(Any, away), after_s=1.0) == []
    assert stuck(ff, cast(Any, away), after_s=1.0) == [] and away.asked == 1  # waits again
    ff.heard([("t", 0)])
    assert stuck(ff, cast(Any, _Cluster(leaders={0: 1})), after_s=0.0) == []
