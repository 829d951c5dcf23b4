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
assignment, so a consumer can re-assign those still silent after a while.
"""

from __future__ import annotations

from collections.abc import Iterable

from stream_app.kafka.records import Partition

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
