"""Micro-batches of requests and the at-least-once commit bookkeeping (pure, no Kafka).

A request's input offset may be committed only once every record produced for
it (prediction and/or DLQ record) is acknowledged by the broker. Batches are
committed strictly in the order they were read, so a slow delivery holds back
later batches instead of letting their commit skip over it: at worst a crash
re-answers requests (clients dedupe by request_id), never drops one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from stream_app.events import Headers

TopicPartitionKey = tuple[str, int]


@dataclass(slots=True)
class _Batch:
    offsets: dict[TopicPartitionKey, int]
    outstanding: int = 0
    sealed: bool = False
    failed: str | None = None


@dataclass(slots=True)
class CommitTracker:
    """Offsets safe to commit = next offsets of the longest prefix of fully delivered batches.

    >>> t = CommitTracker()
    >>> b = t.open({("req", 0): 11}); t.sent(b); t.seal(b)
    >>> t.take()
    {}
    >>> t.delivered(b, None); t.take()
    {('req', 0): 11}
    """

    _batches: deque[_Batch] = field(default_factory=deque)

    def open(self, offsets: dict[TopicPartitionKey, int]) -> _Batch:
        """Start a batch whose input ends at `offsets` (next offset to read, per partition)."""
        batch = _Batch(offsets=dict(offsets))
        self._batches.append(batch)
        return batch

    @staticmethod
    def sent(batch: _Batch) -> None:
        """One more record produced for `batch`, awaiting its delivery report."""
        batch.outstanding += 1

    @staticmethod
    def seal(batch: _Batch) -> None:
        """Every record of `batch` is produced; it completes when all are delivered."""
        batch.sealed = True

    @staticmethod
    def delivered(batch: _Batch, error: str | None) -> None:
        """A delivery report; an error blocks the batch (and all later ones) for good."""
        batch.outstanding -= 1
        if error is not None and batch.failed is None:
            batch.failed = error

    def failure(self) -> str | None:
        """The first delivery error, if any: the process must stop without committing it."""
        return next((b.failed for b in self._batches if b.failed is not None), None)

    def take(self) -> dict[TopicPartitionKey, int]:
        """Pop the completed prefix and return its merged offsets (highest per partition)."""
        out: dict[TopicPartitionKey, int] = {}
        while self._batches:
            head = self._batches[0]
            if not head.sealed or head.outstanding or head.failed is not None:
                break
            self._batches.popleft()
            for tp, offset in head.offsets.items():
                out[tp] = max(offset, out.get(tp, offset))
        return out

    def drop(self, partitions: set[TopicPartitionKey]) -> None:
        """Forget revoked partitions' offsets (their new owner re-reads what we did not commit)."""
        for batch in self._batches:
            for tp in partitions:
                batch.offsets.pop(tp, None)

    def __len__(self) -> int:
        return len(self._batches)


@dataclass(frozen=True, slots=True)
class Pending:
    """A request read but not yet answered: `arrival` is monotonic seconds at poll time,
    `produced_ms` the record's timestamp (when its client produced it; None if unknown)."""

    topic: str
    partition: int
    offset: int
    arrival: float
    key: bytes | None
    value: bytes | None
    produced_ms: int | None = None
    headers: Headers = ()  # copied onto the answer (`copied_headers`)


BATCH_BYTES_MAX = 4 * 1024 * 1024
"""Request bytes scored in one batch (at least one request). 256 requests of ~1 MiB each
(5,000 candidates and excludes, k=1000) took 8.5 s as one batch, answering nothing else
meanwhile; the same work in slices lets the loop poll, commit and check between them."""


def take_batch(pending: list[Pending]) -> tuple[list[Pending], list[Pending]]:
    """The next batch to score (in arrival order, up to `BATCH_BYTES_MAX`) and the rest.

    >>> big = Pending("t", 0, 0, arrival=1.0, key=None, value=b"x" * BATCH_BYTES_MAX)
    >>> [len(part) for part in take_batch([big, big, big])]
    [1, 2]
    """
    size = 0
    for n, p in enumerate(pending):
        size += len(p.value or b"")
        if size > BATCH_BYTES_MAX and n > 0:
            return pending[:n], pending[n:]
    return pending, []


def due(pending: list[Pending], now: float, *, ready: bool, batch_max: int,
        batch_wait_s: float, ready_hold_s: float) -> bool:
    """Score the batch now? Full, or the oldest waited long enough (longer while loading).

    >>> p = [Pending("t", 0, 0, arrival=1.0, key=None, value=None)]
    >>> due(p, 1.001, ready=True, batch_max=8, batch_wait_s=0.002, ready_hold_s=2.0)
    False
    >>> due(p, 1.003, ready=True, batch_max=8, batch_wait_s=0.002, ready_hold_s=2.0)
    True
    """
    if not pending:
        return False
    waited = now - pending[0].arrival
    if not ready:
        return waited >= ready_hold_s
    return len(pending) >= batch_max or waited >= batch_wait_s


def next_offsets(pending: list[Pending]) -> dict[TopicPartitionKey, int]:
    """Offsets to commit once `pending` is answered: last offset + 1 per partition."""
    out: dict[TopicPartitionKey, int] = {}
    for p in pending:
        tp = (p.topic, p.partition)
        out[tp] = max(p.offset + 1, out.get(tp, 0))
    return out
