"""Hand out the records of several partitions in event-time order.

A consumer working through a backlog gets whole fetches of one partition at a
time. Replaying MovieLens into three partitions of two topics, the median
record reached the trainer 23 days of event time behind the newest record it
had already learned from; a model whose strongest signal is recency (decayed
popularity, recent items) learned from that order reaches Recall@20 0.280
instead of the 0.298 it reaches on the same events in time order.

So the trainer's consumer keeps a queue per partition and always hands out the
oldest head among them, Kafka Streams' rule (its `max.task.idle.ms`): while a
partition that still has records on the broker has nothing queued, nothing is
handed out, since its next record may be older than every queued one. The
consumer bounds that wait by its batch wait (for a newly assigned partition,
counted from its assignment); the batch then takes only what is no newer
than such a partition's last record (`release_due`), for up to
ORDER_WAIT_S, and after that everything queued, so a slow partition delays,
and never stops, the others. Before that frontier, a replay's first batches
(fetches of a 390K-event backlog lag the 200 ms batch wait) went out sorted
within themselves but each up to 47 days ahead of the next: 31% of the
events came after one over an hour newer, and Recall@20 through Kafka was
0.312 against 0.324 offline on the same events (0.3225 with every batch
waiting 2 s). Order within a partition is never changed, so offsets
stay contiguous and what a batch commits is exactly what it handed out.
A negative event time is unknown (bad input, a forget request): it goes out
first, and does not move its partition's last event time.

Barriers: a record that `barrier` names (the trainer's forget request, sent
to partition i of every co-partitioned topic) waits at its partition's head
until the same barrier heads partition i of each other topic; then they go
out together, in one batch, as one point in all of them (Flink's barrier
alignment). Released alone, the first half deleted the user's row before
their earlier events on the other topic were read, and the second half then
deleted the events that came after the request too. Held records are not
handed out, so not committed: a crash meanwhile reads them again. A barrier
whose partners do not come (a half that was never written, or two requests
crossed in order) goes out alone after `BARRIER_WAIT_S` in which no partner
partition had anything to hand out that was written (Kafka timestamp) before
`BARRIER_SKEW_MS` after it, nor, while it has given nothing written after
that, records on the broker not fetched yet.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence

from stream_app.kafka.records import Partition, RawRecord

log = logging.getLogger(__name__)

BARRIER_WAIT_S = 10.0
"""How long a barrier waits for partners that cannot come before it (their partitions
hold nothing else to hand out) before it goes out alone."""

ORDER_WAIT_S = 2.0
"""How long, past the batch wait, records newer than a starved partition's last one are
held back (`release_due`). Counted from when the partition first ran dry at that last
event time: one that keeps running dry without its time moving on (a flood of records
without a readable time) no longer holds the others after it, where a clock restarted at
every drain held them for as long as the flood lasted (consumer review)."""

BARRIER_SKEW_MS = 60_000
"""A partner partition whose head was written (Kafka timestamp) this much after the
held half no longer restarts the wait: the partner, written with it, is not before it."""

_NEVER = -(1 << 62)  # the last event time of a partition not heard from yet
_FOREVER = 1 << 62

Barrier = Callable[[RawRecord], Hashable | None]
_Entry = tuple[int, Hashable | None, RawRecord]  # (event time, barrier id, record)
_Head = tuple[int, Partition, int]  # (event time, partition, offset): a heap entry


class EventTimeMerger:
    """Per-partition queues of records, released oldest head first.

    `co_partitioned`: the topics whose partition i align at barriers (see the
    module docstring); without them, `barrier` is not asked.

    >>> m = EventTimeMerger(lambda r: r.timestamp_ms)
    >>> m.add([RawRecord("t", 0, 0, None, b"", 30), RawRecord("t", 1, 0, None, b"", 10)])
    >>> [r.partition for r in m.release(2, waiting_for=())]
    [1, 0]
    """

    def __init__(self, event_time: Callable[[RawRecord], int], *,
                 barrier: Barrier = lambda _r: None, co_partitioned: Sequence[str] = ()) -> None:
        self._event_time = event_time
        self._barrier = barrier if len(co_partitioned) > 1 else (lambda _r: None)
        self._topics = tuple(co_partitioned)
        self._queues: dict[Partition, deque[_Entry]] = {}
        self._held_since: dict[Partition, float] = {}  # barrier heads without their partners
        self._behind: Collection[Partition] = ()
        self._last_time: dict[Partition, int] = {}  # event time of each partition's last record
        self._starved_since: dict[Partition, float] = {}  # ran dry at its current _last_time
        # Per held barrier head, per partner partition: the newest Kafka timestamp of its
        # records added since the hold began (`_partners_busy`).
        self._partner_written: dict[Partition, dict[Partition, int]] = {}

    def add(self, records: Iterable[RawRecord]) -> None:
        for rec in records:
            key = (rec.topic, rec.partition)
            et = self._event_time(rec)
            self._queues.setdefault(key, deque()).append((et, self._barrier(rec), rec))
            if et >= 0:  # unknown (bad input, a forget request) says nothing of what follows
                if et > self._last_time.get(key, _NEVER):  # its frontier moves on
                    self._starved_since.pop(key, None)
                self._last_time[key] = et
            if self._partner_written:
                self._note_written(key, rec.timestamp_ms)

    def queued(self, partition: Partition) -> int:
        return len(self._queues.get(partition, ()))

    def __len__(self) -> int:
        """Records queued in all partitions: held back (order, barriers) or not taken yet."""
        return sum(len(q) for q in self._queues.values())

    def drop(self, partitions: Iterable[Partition]) -> None:
        """Forget what is queued for `partitions`: revoked, or rewound to the committed offset."""
        for p in partitions:
            self._queues.pop(p, None)
            self._held_since.pop(p, None)
            self._last_time.pop(p, None)  # rewound: its next record is an older one
            self._starved_since.pop(p, None)
            self._partner_written.pop(p, None)
            for r in self._partners(p):  # rewound: it may bring the partner again
                self._held_since.pop(r, None)
                self._partner_written.pop(r, None)

    def release_due(self, limit: int, behind: Collection[Partition],
                    now: float | None = None) -> list[RawRecord]:
        """Once a batch's wait is over: up to `limit` records, oldest head first, no newer
        than the last record of any partition of `behind` (records on the broker beyond
        what is queued) with nothing queued, its next record being likely no older. Such
        a partition holds the others back for ORDER_WAIT_S, one never heard from too.

        >>> m = EventTimeMerger(lambda r: r.timestamp_ms)
        >>> m.add([RawRecord("t", 0, 0, None, b"", 10), RawRecord("t", 1, 0, None, b"", 20),
        ...        RawRecord("t", 1, 1, None, b"", 30)])
        >>> [(r.partition, r.offset) for r in m.release_due(9, behind={("t", 0)}, now=0.0)]
        [(0, 0)]
        >>> [(r.partition, r.offset) for r in m.release_due(9, behind={("t", 0)}, now=2.5)]
        [(1, 0), (1, 1)]

        (t[0]'s next record is likely no older than 10; after ORDER_WAIT_S, t[1] goes on.)
        """
        now = time.monotonic() if now is None else now
        for p in [p for p in self._starved_since if p not in behind]:
            del self._starved_since[p]  # caught up: its next dry spell starts a new wait
        starved = [p for p in behind if not self._queues.get(p)]
        holding = [p for p in starved if self._holds_others(p, now)]
        upto = min((self._last_time.get(p, _NEVER) for p in holding), default=_FOREVER)
        return self.release(limit, (), now, behind=behind, upto=upto)

    def release(self, limit: int, waiting_for: Collection[Partition],
                now: float | None = None, *,
                behind: Collection[Partition] | None = None,
                upto: int | None = None) -> list[RawRecord]:
        """Up to `limit` records, oldest head first, while no partition of `waiting_for` is empty.

        `waiting_for`: partitions with records on the broker beyond what is
        queued here. Pass none to release what is queued regardless (the wait
        for a slow partition is over), up to event time `upto` if given. Aligned
        barriers go out together, and may take the batch past `limit` by the
        partners' count.
        """
        out: list[RawRecord] = []
        if any(not self._queues.get(p) for p in waiting_for):
            return out
        now = time.monotonic() if now is None else now
        self._behind = waiting_for if behind is None else behind
        held: set[Partition] = set()
        heads: list[_Head] = []
        for p in self._queues:
            self._classify(p, now, heads, held)
        heapq.heapify(heads)
        while heads and len(out) < limit:
            if upto is not None and heads[0][0] > upto:
                break
            _, p, offset = heapq.heappop(heads)
            queue = self._queues.get(p)
            if not queue or queue[0][2].offset != offset:
                continue  # gone out already, as a barrier's partner
            if queue[0][1] is None and not (held and self._holds_partner(p, held)):
                out.append(queue.popleft()[2])
                if queue and queue[0][1] is None:
                    heapq.heappush(heads, (queue[0][0], p, queue[0][2].offset))
                elif queue:
                    self._classify(p, now, heads, held, push=True)
                elif p in waiting_for:
                    break
                elif upto is not None:
                    upto = self._frontier(upto, [p], now)
                continue
            aligned = self._aligned(p)
            if not aligned and queue[0][1] is not None and self._hold(p, now):
                held.add(p)  # classified as given up on, but a partner got busy since
                continue
            group = [p, *self._partners(p)] if aligned else [p]
            for q in group:
                out.append(self._queues[q].popleft()[2])
                self._held_since.pop(q, None)
                self._partner_written.pop(q, None)
            if any(q in waiting_for and not self._queues[q] for q in group):
                break
            if upto is not None:
                upto = self._frontier(upto, [q for q in group if not self._queues[q]], now)
            for q in {*group, *(h for h in held if set(group) & set(self._partners(h)))}:
                held.discard(q)
                self._classify(q, now, heads, held, push=True)
        return out

    def _frontier(self, upto: int, drained: Iterable[Partition], now: float) -> int:
        """`upto`, lowered to the last event time of each `drained` partition still behind:
        its next record is likely no older, so newer ones wait for it (`release_due`)."""
        for p in drained:
            if p in self._behind and self._holds_others(p, now):
                upto = min(upto, self._last_time.get(p, _NEVER))
        return upto

    def _holds_others(self, p: Partition, now: float) -> bool:
        """Whether the starved `p` still holds back records newer than its last one: for
        ORDER_WAIT_S from when it first ran dry at that event time."""
        return now - self._starved_since.setdefault(p, now) < ORDER_WAIT_S

    def _classify(self, p: Partition, now: float, heads: list[_Head], held: set[Partition],
                  *, push: bool = False) -> None:
        """Put `p`'s head on `heads`, unless it is a barrier waiting for its partners."""
        queue = self._queues.get(p)
        if not queue:
            return
        ts, barrier, rec = queue[0]
        if barrier is not None and not self._aligned(p):
            if self._hold(p, now):
                held.add(p)
                return
            log.warning("%s[%d] offset %d: its partners on %s did not come in %.0fs; "
                        "handing it out alone", p[0], p[1], rec.offset,
                        [q[0] for q in self._partners(p)], BARRIER_WAIT_S)
        entry = (ts, p, rec.offset)
        if push:
            heapq.heappush(heads, entry)
        else:
            heads.append(entry)

    def _hold(self, p: Partition, now: float) -> bool:
        """Whether `p`'s unaligned barrier head keeps waiting for its partners."""
        if p not in self._held_since:  # the hold begins: what partners give from now on
            self._partner_written[p] = {}
        since = self._held_since.setdefault(p, now)
        if self._partners_busy(p):
            self._held_since[p] = since = now  # they may still bring the partner
        return now - since < BARRIER_WAIT_S

    def _note_written(self, r: Partition, written_ms: int) -> None:
        """A record of `r` came: for each held head `r` is a partner of, keep the newest
        write time, none ahead of the wall clock (a producer's clock ahead, or one record
        of it, must not let every later half go alone)."""
        written_ms = min(written_ms, int(time.time() * 1000))
        for p, seen in self._partner_written.items():
            if p[1] == r[1] and p[0] != r[0] and written_ms > seen.get(r, _NEVER):
                seen[r] = written_ms

    def _holds_partner(self, p: Partition, held: set[Partition]) -> bool:
        return any(r in held for r in self._partners(p))

    def _partners(self, p: Partition) -> list[Partition]:
        return [(t, p[1]) for t in self._topics if t != p[0]]

    def _aligned(self, p: Partition) -> bool:
        """Whether `p`'s head is a barrier that heads every partner partition too."""
        barrier = self._queues[p][0][1]
        return barrier is not None and all(
            (q := self._queues.get(r)) and q[0][1] == barrier for r in self._partners(p))

    def _partners_busy(self, p: Partition) -> bool:
        """Whether a partner partition has something else to hand out first."""
        head = self._queues[p][0][2]
        after = head.timestamp_ms + BARRIER_SKEW_MS
        for r in self._partners(p):
            q = self._queues.get(r)
            if not q:
                # Its next record, maybe the partner, is on the broker; unless it already
                # gave records written well after this half, which the partner (written
                # with it) comes before. Without that, a live partner drained at every
                # batch restarted the wait each time, and the half never went out.
                if r in self._behind and self._partner_written.get(p, {}).get(r, _NEVER) <= after:
                    return True
            elif q[0][1] is None and q[0][2].timestamp_ms <= after:
                return True  # (a head written well after this half: the partner is not coming)
        return False
