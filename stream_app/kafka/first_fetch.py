"""Partitions assigned but never fetched: librdkafka can leave one idle for good.

After an assignment, librdkafka asks the group coordinator for the committed
offsets before it fetches. If that request meets a stale coordinator (a broker
restart, a coordinator move) and the broker answers NOT_COORDINATOR for the
whole request, the partition waits forever: the request is not retried, no
error reaches the application, and the partition's lag is not even known
(confluentinc/librdkafka#5586, open). Assigning the partition again, or
restarting the process, cures it.

A fetched partition is heard from soon after its assignment: a record, or
the end-of-partition event (`enable.partition.eof`) when there is nothing to
read. `FirstFetch` keeps the partitions not heard from since their
assignment. A partition is stuck when it is still silent after a while
*and* the cluster can serve it now (`stuck`): a leader in the metadata and
a committed offset the group coordinator answers for. Silence while the
broker is away or a leader is being elected is the cluster's, and is waited
out. The trainer and the scorer then exit for a restart: re-assigning one
partition in place races the group's own rebalances (librdkafka takes such
a call as the answer to a pending rebalance callback), and the trainer's
eager assignment can only be renewed whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException
from confluent_kafka import TopicPartition as _TP

from stream_app.kafka.records import Partition
from stream_app.signals import EXIT_STALLED

log = logging.getLogger(__name__)

SILENT_AFTER_S = 30.0
"""How long an assigned partition may go unheard before it counts as stuck. A
fetched one is heard within a fetch round trip (`fetch.wait.max.ms`, 500 ms by
default, or less); 30 s leaves room for a slow broker and a busy loop."""


class FirstFetch:
    """When each assigned partition was assigned, until it is first heard from.

    >>> ff = FirstFetch()
    >>> ff.assigned([("t", 0), ("t", 1)], now=0.0)
    >>> ff.heard([("t", 0)])
    >>> ff.silent(now=10.0, after_s=30.0), ff.silent(now=31.0, after_s=30.0)
    ([], [('t', 1)])
    >>> ff.gone([("t", 1)]); ff.silent(now=99.0, after_s=30.0)
    []
    """

    def __init__(self) -> None:
        self._since: dict[Partition, float] = {}

    def assigned(self, parts: Iterable[Partition], now: float) -> None:
        for part in parts:
            self._since[part] = now

    def heard(self, parts: Iterable[Partition]) -> None:
        for part in parts:
            self._since.pop(part, None)

    def gone(self, parts: Iterable[Partition]) -> None:
        """Revoked or lost: no longer ours to watch."""
        self.heard(parts)

    def silent(self, now: float, after_s: float = SILENT_AFTER_S) -> list[Partition]:
        """Partitions assigned at least `after_s` ago and not heard from since."""
        return sorted(p for p, since in self._since.items() if now - since >= after_s)


def stuck(first_fetch: FirstFetch, consumer: Consumer, after_s: float,
          timeout_s: float = 5.0) -> list[Partition]:
    """Partitions silent `after_s` after their assignment that the cluster can serve now.

    Asks the broker only when some partition is silent. Those the cluster
    cannot serve (no leader, the coordinator not answering, the broker away)
    have their wait started again.
    """
    now = time.monotonic()
    silent = first_fetch.silent(now, after_s)
    if not silent:
        return []
    served = _servable(consumer, silent, timeout_s)
    first_fetch.assigned([p for p in silent if p not in served], now)
    return [p for p in silent if p in served]


def _servable(consumer: Consumer, parts: list[Partition], timeout_s: float) -> set[Partition]:
    """One deadline for every question: the caller's loop waits on this."""
    deadline = time.monotonic() + timeout_s

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    try:
        committed = consumer.committed([_TP(t, p) for t, p in parts], timeout=left())
        meta = {t: consumer.list_topics(t, timeout=left()).topics.get(t)
                for t in {t for t, _ in parts}}
    except KafkaException:
        return set()
    out = set()
    for tp in committed:
        topic = meta.get(tp.topic)
        part = topic.partitions.get(tp.partition) if topic is not None else None
        if tp.error is None and part is not None and part.leader >= 0:
            out.add((tp.topic, tp.partition))
    return out


def log_never_fetched(parts: list[Partition], after_s: float, role: str) -> None:
    log.error("partitions=%s assigned over %gs ago and never fetched, though the cluster "
              "serves them (a librdkafka offset fetch that is not retried, "
              "confluentinc/librdkafka#5586): exiting with status %d so a supervisor "
              "restarts the %s", parts, after_s, EXIT_STALLED, role)
