"""Readiness of the initial `embeddings` load (pure, no Kafka).

At start the scorer takes each partition's end offset; it is ready once every
partition was read up to that offset. With `read_committed` a transaction
marker or an aborted batch may sit at the end, so reaching the end is also
proven by a partition-EOF report at an offset >= the start end offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class LoadProgress:
    """`ends`: partition -> end offset taken at start; `reached`: how far each got.

    >>> p = LoadProgress(ends={0: 3, 1: 0})
    >>> p.done()
    False
    >>> p.read(0, 2); p.done()
    True
    """

    ends: dict[int, int]
    reached: dict[int, int] = field(default_factory=dict)
    records: int = 0

    def read(self, partition: int, offset: int) -> None:
        """A record at `offset` was applied."""
        self.records += 1
        self._advance(partition, offset + 1)

    def eof(self, partition: int, offset: int) -> None:
        """The consumer reached the end of `partition` at `offset`."""
        self._advance(partition, offset)

    def _advance(self, partition: int, offset: int) -> None:
        if offset > self.reached.get(partition, 0):
            self.reached[partition] = offset

    def done(self) -> bool:
        return all(self.reached.get(p, 0) >= end for p, end in self.ends.items())

    def describe(self) -> str:
        """For /readyz: how far the load is, per partition."""
        parts = ", ".join(f"{p}:{self.reached.get(p, 0)}/{end}"
                          for p, end in sorted(self.ends.items()))
        return f"loading embeddings ({self.records} records; {parts})"
