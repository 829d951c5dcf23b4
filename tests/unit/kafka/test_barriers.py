"""EventTimeMerger barriers: a forget request's two records, one per co-partitioned topic,
go out together, after every earlier record of both partitions and before any later one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream_app.kafka.event_time import BARRIER_WAIT_S, EventTimeMerger
from stream_app.kafka.records import RawRecord

TOPICS = ("clicks", "purchases")


def rec(topic: str, offset: int, ts: int, barrier: str | None = None,
        partition: int = 0) -> RawRecord:
    """`barrier` rides in the value: the merger below reads it back from there."""
    return RawRecord(topic, partition, offset, None, (barrier or "").encode(), ts)


def merger() -> EventTimeMerger:
    return EventTimeMerger(lambda r: -1 if r.value else r.timestamp_ms,
                           barrier=lambda r: r.value.decode() if r.value else None,
                           co_partitioned=TOPICS)


def names(records: list[RawRecord]) -> list[str]:
    return [f"{r.topic[0]}{r.offset}" for r in records]


def test_a_forget_waits_for_its_partner_and_the_records_before_it() -> None:
    """The case a black-box check found: clicks c0 c1 F c3 c4, purchases p0 (a later event
    time) F. Released one by one, c3 and c4 went out before p0; the purchases half then
    deleted the row they had re-created."""
    m = merger()
    m.add([rec("clicks", 0, 1), rec("clicks", 1, 2), rec("clicks", 2, 0, "R"),
           rec("clicks", 3, 3), rec("clicks", 4, 4)])
    m.add([rec("purchases", 0, 10), rec("purchases", 1, 0, "R")])
    assert names(m.release(100, waiting_for=(), now=0.0)) == ["c0", "c1", "p0", "c2", "p1",
                                                             "c3", "c4"]


def test_a_forget_is_held_while_its_partner_is_not_read_yet() -> None:
    m = merger()
    m.add([rec("clicks", 0, 0, "R"), rec("clicks", 1, 5)])
    m.add([rec("purchases", 0, 1)])
    assert names(m.release(100, waiting_for=(), now=0.0)) == ["p0"]
    assert m.queued(("clicks", 0)) == 2  # neither handed out nor committed
    m.add([rec("purchases", 1, 0, "R")])
    assert names(m.release(100, waiting_for=(), now=1.0)) == ["c0", "p1", "c1"]


def test_the_pair_goes_out_in_one_batch_even_past_the_limit() -> None:
    """Split over two transactions, a crash between them would leave the second half
    alone at its partition's head after a restart."""
    m = merger()
    m.add([rec("clicks", 0, 1), rec("clicks", 1, 0, "R")])
    m.add([rec("purchases", 0, 0, "R")])
    assert names(m.release(2, waiting_for=(), now=0.0)) == ["c0", "c1", "p0"]


def test_a_lone_half_goes_out_after_the_wait_if_nothing_else_can() -> None:
    m = merger()
    m.add([rec("clicks", 0, 0, "R"), rec("clicks", 1, 5)])
    m.add([rec("clicks", 0, 3, partition=1)])  # another partition is not a partner
    assert names(m.release(100, waiting_for=(), now=0.0)) == ["c0"]  # partition 1's
    assert names(m.release(100, waiting_for=(), now=BARRIER_WAIT_S - 0.1)) == []
    assert names(m.release(100, waiting_for=(), now=BARRIER_WAIT_S)) == ["c0", "c1"]


def test_the_wait_restarts_while_the_partner_partition_still_has_records_to_give() -> None:
    """A backlog ahead of the partner on its partition is no reason to give up on it."""
    m = merger()
    m.add([rec("clicks", 0, 0, "R")])
    m.add([rec("purchases", k, 100 + k) for k in range(3)])
    assert names(m.release(1, waiting_for=(), now=0.0)) == ["p0"]
    assert names(m.release(1, waiting_for=(), now=BARRIER_WAIT_S)) == ["p1"]
    assert names(m.release(1, waiting_for=(), now=2 * BARRIER_WAIT_S - 1)) == ["p2"]
    m.add([rec("purchases", 3, 0, "R")])
    assert names(m.release(5, waiting_for=(), now=2 * BARRIER_WAIT_S)) == ["c0", "p3"]


def test_two_requests_crossed_in_order_do_not_hold_each_other_for_good() -> None:
    m = merger()
    m.add([rec("clicks", 0, 0, "A"), rec("clicks", 1, 0, "B")])
    m.add([rec("purchases", 0, 0, "B"), rec("purchases", 1, 0, "A")])
    assert m.release(100, waiting_for=(), now=0.0) == []
    # Clicks' A goes alone; B then heads both partitions and goes as a pair; A's other
    # half waits its own time for a partner.
    assert names(m.release(100, waiting_for=(), now=BARRIER_WAIT_S)) == ["c0", "c1", "p0"]
    assert names(m.release(100, waiting_for=(), now=2 * BARRIER_WAIT_S)) == ["p1"]


@given(st.lists(st.tuples(st.sampled_from(TOPICS), st.integers(0, 50)), max_size=30),
       st.integers(1, 7))
def test_nothing_is_reordered_within_a_partition_or_lost(
        events: list[tuple[str, int]], limit: int) -> None:
    """Events with a forget pair anywhere in them: every record goes out once, in its
    partition's order, and the pair goes out side by side."""
    m = merger()
    offsets = {t: 0 for t in TOPICS}
    records: list[RawRecord] = []
    middle = len(events) // 2
    for i, (topic, ts) in enumerate(events):
        if i == middle:
            for t in TOPICS:
                records.append(rec(t, offsets[t], 0, "R"))
                offsets[t] += 1
        records.append(rec(topic, offsets[topic], ts))
        offsets[topic] += 1
    m.add(records)
    out: list[RawRecord] = []
    while batch := m.release(limit, waiting_for=(), now=0.0):
        out += batch
    assert sorted(names(out)) == sorted(names(records))
    for t in TOPICS:
        assert [r.offset for r in out if r.topic == t] == list(range(offsets[t]))
    if events:
        pair = [i for i, r in enumerate(out) if r.value]
        assert len(pair) == 2 and pair[1] == pair[0] + 1
