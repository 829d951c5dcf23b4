"""EventTimeMerger: oldest head first across partitions, never reordering one partition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream_app.kafka.event_time import EventTimeMerger
from stream_app.kafka.records import RawRecord


def rec(partition: int, offset: int, ts: int, topic: str = "clicks") -> RawRecord:
    return RawRecord(topic, partition, offset, None, b"", ts)


def by_ts() -> EventTimeMerger:
    return EventTimeMerger(lambda r: r.timestamp_ms)


def coords(records: list[RawRecord]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]


def test_releases_the_oldest_head_across_partitions_and_topics() -> None:
    m = by_ts()
    m.add([rec(0, 0, 10), rec(0, 1, 20), rec(0, 2, 30)])
    m.add([rec(1, 0, 5), rec(1, 1, 25)])
    m.add([rec(0, 0, 15, topic="purchases")])
    got = m.release(10, waiting_for=())
    assert [r.timestamp_ms for r in got] == [5, 10, 15, 20, 25, 30]
    assert m.queued(("clicks", 0)) == 0


def test_never_reorders_within_a_partition() -> None:
    m = by_ts()
    m.add([rec(0, 0, 50), rec(0, 1, 10)])  # late event after a newer one
    m.add([rec(1, 0, 20)])
    assert coords(m.release(10, waiting_for=())) == [(1, 0), (0, 0), (0, 1)]


def test_waits_for_a_partition_that_is_behind_and_has_nothing_queued() -> None:
    m = by_ts()
    m.add([rec(0, 0, 10), rec(0, 1, 20)])
    assert m.release(10, waiting_for=[("clicks", 1)]) == []
    m.add([rec(1, 0, 15)])
    # Partition 1 drains after its only record: stop, its next one may be older than 20.
    assert coords(m.release(10, waiting_for=[("clicks", 1)])) == [(0, 0), (1, 0)]
    assert coords(m.release(10, waiting_for=())) == [(0, 1)]


def test_limit_and_drop() -> None:
    m = by_ts()
    m.add([rec(0, i, i) for i in range(5)])
    m.add([rec(1, i, i) for i in range(5)])
    assert len(m.release(3, waiting_for=())) == 3
    m.drop([("clicks", 0)])
    assert m.queued(("clicks", 0)) == 0
    assert all(r.partition == 1 for r in m.release(10, waiting_for=()))


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000)), max_size=60),
       st.integers(1, 7))
def test_any_arrival_order_comes_out_merged(arrivals: list[tuple[int, int]], limit: int) -> None:
    """Fed in any interleaving, released in chunks: per-partition order kept, and
    every record leaves before any queued record with a smaller head timestamp."""
    m = by_ts()
    offsets = [0, 0, 0, 0]
    sent: list[RawRecord] = []
    for p, ts in arrivals:
        sent.append(rec(p, offsets[p], ts))
        offsets[p] += 1
    m.add(sent)
    out: list[RawRecord] = []
    while chunk := m.release(limit, waiting_for=()):
        assert len(chunk) <= limit
        out += chunk
    assert sorted(coords(out)) == sorted(coords(sent))
    for p in range(4):
        assert [r.offset for r in out if r.partition == p] == list(range(offsets[p]))
    # A k-way merge: each released record was the oldest head at its turn.
    heads = {p: [r.timestamp_ms for r in sent if r.partition == p] for p in range(4)}
    for r in out:
        live = [q[0] for q in heads.values() if q]
        assert r.timestamp_ms == min(live)
        heads[r.partition].pop(0)


def test_after_the_wait_a_drained_partition_holds_newer_records_for_a_while() -> None:
    """A replay's backlog: partition 0's next fetch lags, partition 1 has weeks queued. The
    batch takes partition 1 only up to partition 0's last record; before, its first
    batches each ran weeks ahead of the next (31% of MovieLens learned out of order)."""
    m = by_ts()
    m.add([rec(0, 0, 10), rec(0, 1, 20)])
    m.add([rec(1, n, 15 + 10 * n) for n in range(5)])  # 15, 25, ..., 55
    behind = {("clicks", 0), ("clicks", 1)}
    assert coords(m.release_due(10, behind, now=0.0)) == [(0, 0), (1, 0), (0, 1)]
    assert m.release_due(10, behind, now=1.0) == []  # 25 > 20: partition 0's next may be older
    m.add([rec(0, 2, 30)])  # its fetch came
    assert coords(m.release_due(10, behind, now=1.5)) == [(1, 1), (0, 2)]
    assert coords(m.release_due(10, behind, now=4.0)) == [(1, 2), (1, 3), (1, 4)]  # 2.5 s: on
    m.add([rec(1, 5, 65)])
    assert coords(m.release_due(10, {("clicks", 1)}, now=4.0)) == [(1, 5)]  # 0 caught up


def test_a_partition_never_heard_from_holds_the_others_only_for_the_order_wait() -> None:
    m = by_ts()
    m.add([rec(1, 0, 10)])
    behind = {("clicks", 0), ("clicks", 1)}
    assert m.release_due(10, behind, now=0.0) == []
    assert coords(m.release_due(10, behind, now=2.0)) == [(1, 0)]


def test_a_record_without_event_time_does_not_move_its_partitions_frontier() -> None:
    """Bad input and forget requests order as -1; as a drained partition's last record, that
    held every later record of the others for the whole ORDER_WAIT_S."""
    m = by_ts()
    m.add([rec(0, 0, 10), rec(0, 1, -1)])
    assert coords(m.release_due(10, {("clicks", 0)}, now=0.0)) == [(0, 0), (0, 1)]
    m.add([rec(1, 0, 8)])  # a partition whose fetch came late, older than partition 0's last
    assert coords(m.release_due(10, {("clicks", 0)}, now=0.5)) == [(1, 0)]


def test_a_flood_without_event_time_holds_the_others_only_for_the_order_wait() -> None:
    """Partition 0 gets only records without a readable time (bad input), one a batch, and
    each batch drains it. Its frontier stays at its last good record, and a clock restarted
    at every drain held partition 1's newer records for as long as the flood lasted
    (consumer review); counted from the first drain at that time, for ORDER_WAIT_S."""
    m = by_ts()
    behind = {("clicks", 0), ("clicks", 1)}
    m.add([rec(0, 0, 10)])
    released: list[RawRecord] = []
    for step in range(20):  # a batch every 0.5 s
        now = 0.5 * step
        m.add([rec(0, step + 1, -1), rec(1, step, 100 + step)])
        released += m.release(100, behind, now=now)
        released += m.release_due(100, behind, now=now)
    assert [r.offset for r in released if r.partition == 0] == list(range(21))
    assert [r.offset for r in released if r.partition == 1] == list(range(20))


def test_a_partition_caught_up_in_between_holds_the_others_again_when_it_runs_dry() -> None:
    """Its wait was still counted from a dry spell an hour before, so a late record (no
    newer than its last) ran it dry again without holding anything (review)."""
    m = by_ts()
    m.add([rec(0, 0, 100)])
    m.release_due(10, behind={("clicks", 0)}, now=0.0)  # dry while behind: its wait starts
    m.release_due(10, behind=set(), now=1.0)  # caught up
    m.add([rec(0, 1, 90)])  # an hour later, a late record; then newer ones of partition 1
    m.add([rec(1, 0, 150), rec(1, 1, 160)])
    assert coords(m.release_due(10, behind={("clicks", 0)}, now=3600.0)) == [(0, 1)]
    assert coords(m.release_due(10, behind={("clicks", 0)}, now=3602.5)) == [(1, 0), (1, 1)]
