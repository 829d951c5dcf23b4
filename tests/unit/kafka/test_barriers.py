"""EventTimeMerger barriers: a forget request's two records, one per co-partitioned topic,
go out together, after every earlier record of both partitions and before any later one."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.kafka.event_time import BARRIER_WAIT_S, EventTimeMerger
from stream_app.kafka.records import Partition, RawRecord

TOPICS = ("clicks", "purchases")
C, P = ("clicks", 0), ("purchases", 0)


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


# Found by a review of the first version: halves split although their partners could
# still come, or a partition held for good.

def test_crossed_requests_with_a_record_between_still_pair_the_second() -> None:
    """purchases' B was judged alone at the start of the release (its partner partition
    then headed by A, a barrier) and went out alone once A had."""
    m = merger()
    m.add([rec("clicks", 0, 0, "A"), rec("clicks", 1, 5), rec("clicks", 2, 0, "B")])
    m.add([rec("purchases", 0, 0, "B"), rec("purchases", 1, 0, "A")])
    assert m.release(100, waiting_for=(), now=0.0) == []
    assert names(m.release(100, waiting_for=(), now=BARRIER_WAIT_S)) == ["c0", "c1", "c2",
                                                                        "p0"]


def test_a_lone_half_does_not_drag_the_next_request_apart() -> None:
    """A half whose partner was never written (a failed send, retried as request B)."""
    m = merger()
    m.add([rec("clicks", 0, 0, "L"), rec("clicks", 1, 5), rec("clicks", 2, 0, "B")])
    m.add([rec("purchases", 0, 0, "B"), rec("purchases", 1, 7)])
    assert m.release(100, waiting_for=(), now=0.0) == []
    assert names(m.release(100, waiting_for=(), now=BARRIER_WAIT_S)) == ["c0", "c1", "c2",
                                                                        "p0", "p1"]


def test_a_lone_half_is_not_held_for_good_by_a_steady_partner_stream() -> None:
    """A purchase every 5 s restarted the wait at each release, and clicks[0] never moved
    again. Records written (Kafka timestamp) well after the half cannot precede its
    partner, so they no longer restart it."""
    m = merger()
    m.add([rec("clicks", 0, 0, "L"), rec("clicks", 1, 1)])
    offset, released = 0, []
    for second in range(600):
        if second % 5 == 0:
            m.add([rec("purchases", offset, 1000 * second)])
            offset += 1
        released += names(m.release(100, waiting_for=(), now=float(second)))
    assert "c0" in released


def _poll(m: EventTimeMerger, behind: set[Partition], now: float, limit: int = 100
          ) -> list[str]:
    """What `GroupConsumer.poll_batch` asks when nothing new was fetched."""
    out = m.release(limit, behind, now=now)
    return names(out + m.release(limit - len(out), (), now=now, behind=behind))


def test_the_wait_does_not_run_out_while_the_partner_partition_is_behind() -> None:
    """Its records on the broker, none fetched yet (a leader moving, a slow first fetch)."""
    m = merger()
    m.add([rec("clicks", 0, 0, "R"), rec("clicks", 1, 50)])
    for t in range(11):
        assert "c0" not in _poll(m, {P}, float(t))
    m.add([rec("purchases", 0, 10), rec("purchases", 1, 0, "R")])
    assert _poll(m, set(), 11.0) == ["p0", "c0", "p1", "c1"]


def test_a_rewound_partner_does_not_inherit_an_old_timer() -> None:
    """An abort drops (rewinds) the partner partition; the restore after it may take
    longer than the wait, and the half then went out at once, alone."""
    m = merger()
    m.add([rec("clicks", 0, 0, "R")])
    m.add([rec("purchases", 0, 10), rec("purchases", 1, 0, "R")])
    assert _poll(m, {C, P}, 0.0, limit=1) == ["p0"]
    m.drop([P])
    assert "c0" not in _poll(m, {P}, 30.0)


@st.composite
def _schedules(draw: st.DrawFn) -> tuple[dict[Partition, list[tuple[int, str | None]]],
                                         list[tuple[str, Partition, int, float]]]:
    """Two topics x two partitions of records and barriers (paired, lone or crossed), fed
    in chunks between releases at random times and limits, and rewinds."""
    streams: dict[Partition, list[tuple[int, str | None]]] = {}
    for part in (0, 1):
        requests = [f"r{part}{k}" for k in range(draw(st.integers(0, 3)))]
        for topic in TOPICS:
            seq: list[tuple[int, str | None]] = [
                (ts, None) for ts in draw(st.lists(st.integers(0, 30), max_size=8))]
            mine = [r for r in requests if draw(st.booleans()) or topic == "clicks"]
            for r in reversed(mine) if draw(st.booleans()) else mine:
                seq.insert(draw(st.integers(0, len(seq))), (-1, r))
            streams[(topic, part)] = seq
    ops = draw(st.lists(st.tuples(st.sampled_from(["add", "release", "drop"]),
                                  st.sampled_from(sorted(streams)), st.integers(1, 4),
                                  st.floats(0, 12)), max_size=40))
    return streams, ops


@settings(max_examples=300, deadline=None)
@given(_schedules())
def test_no_record_is_lost_repeated_or_reordered_across_calls_and_rewinds(
        schedule: tuple[dict[Partition, list[tuple[int, str | None]]],
                        list[tuple[str, Partition, int, float]]]) -> None:
    streams, ops = schedule
    m = merger()
    fed = dict.fromkeys(streams, 0)  # next index to add
    position = dict.fromkeys(streams, 0)  # next index to hand out (the consumer's position)
    now = 0.0

    def handed_out(batch: list[RawRecord]) -> None:
        for r in batch:
            part = (r.topic, r.partition)
            assert r.offset == position[part]
            position[part] += 1

    def feed(part: Partition, n: int) -> None:
        chunk = streams[part][fed[part]:fed[part] + n]
        m.add([rec(part[0], fed[part] + i, ts, b, part[1]) for i, (ts, b) in enumerate(chunk)])
        fed[part] += len(chunk)

    for kind, part, n, dt in ops:
        now += dt
        if kind == "add":
            feed(part, n)
        elif kind == "drop":
            m.drop([part])
            fed[part] = position[part]
        else:
            behind = {q for q in streams if fed[q] < len(streams[q])}
            batch = m.release(n, behind, now=now)
            handed_out(batch + m.release(max(0, n - len(batch)), (), now=now, behind=behind))
    for part in streams:
        feed(part, len(streams[part]))
    for _ in range(60):  # time runs on: every record comes out
        now += BARRIER_WAIT_S
        handed_out(m.release(1000, (), now=now))
    assert position == {part: len(seq) for part, seq in streams.items()}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TOPICS), st.integers(0, 20),
                          st.sampled_from([None, None, None, "A", "B", "L"])), max_size=16),
       st.integers(1, 6))
def test_a_half_goes_alone_only_when_its_partner_is_not_just_behind_plain_records(
        events: list[tuple[str, int, str | None]], limit: int) -> None:
    offsets = dict.fromkeys(TOPICS, 0)
    records: list[RawRecord] = []
    seen: set[tuple[str, str]] = set()
    for topic, ts, barrier in events:
        if barrier is not None:
            if (topic, barrier) in seen:
                continue
            seen.add((topic, barrier))
        records.append(rec(topic, offsets[topic], ts, barrier))
        offsets[topic] += 1
    queued = {t: deque(r for r in records if r.topic == t) for t in TOPICS}
    m = merger()
    m.add(records)
    now = 0.0
    for _ in range(40):
        out = m.release(limit, (), now=now)
        i = 0
        while i < len(out):
            r = out[i]
            queued[r.topic].popleft()
            if r.value:
                after = out[i + 1] if i + 1 < len(out) else None
                if after is not None and after.value == r.value and after.topic != r.topic:
                    queued[after.topic].popleft()
                    i += 2
                    continue
                other = TOPICS[1] if r.topic == TOPICS[0] else TOPICS[0]
                assert next((q.value for q in queued[other] if q.value), None) != r.value
            i += 1
        now += BARRIER_WAIT_S / 2


def test_a_pair_that_drains_a_partition_behind_holds_newer_records_after_the_wait() -> None:
    """Once a batch's wait is over (`release_due`), a partition that is behind and drained
    holds back what is newer than its last record; a forget pair that drained it did not."""
    m = merger()
    m.add([rec("clicks", 0, 10), rec("clicks", 1, 0, "R")])
    m.add([rec("purchases", 0, 0, "R")])
    m.add([rec("clicks", 0, 20, partition=1), rec("clicks", 1, 30, partition=1)])
    assert names(m.release_due(100, behind={C}, now=0.0)) == ["c0", "c1", "p0"]
    assert names(m.release_due(100, behind={C}, now=2.5)) == ["c0", "c1"]  # waited enough


def test_a_lone_half_is_not_held_for_good_by_a_live_partner_drained_at_every_batch() -> None:
    """The partner partition is live (behind: more on the broker) and every batch drains
    it. Empty and behind, it restarted the wait at each batch, and clicks[0] never moved
    again (consumer review); once it has given records written well after the half, its
    next ones cannot bring the partner."""
    m = merger()
    m.add([rec("clicks", 0, 0, "L"), rec("clicks", 1, 1)])
    released: list[str] = []
    for second in range(120):
        m.add([rec("purchases", second, 1000 * second)])
        released += _poll(m, {C, P}, float(second))
    assert "c0" in released and "c1" in released


def test_a_partner_record_written_ahead_before_the_hold_does_not_let_a_half_go_alone() -> None:
    """Once the partner partition had given a record from a clock hours ahead, every later
    half counted it as written after itself, and went out alone while its partner was
    still on the broker, its partition's fetch stalled (review)."""
    m = merger()
    ahead = 20 * 3_600_000
    m.add([rec("purchases", 0, ahead), rec("clicks", 0, 0)])
    assert _poll(m, {C, P}, 0.0) == ["c0", "p0"]
    m.add([rec("clicks", 1, 1000, "F"), rec("clicks", 2, 1001)])
    for t in range(1, 30):  # purchases[0] behind, nothing fetched: the partner is coming
        assert "c1" not in _poll(m, {P}, float(t))
    m.add([rec("purchases", 1, 1000, "F")])
    assert _poll(m, set(), 30.0) == ["c1", "p1", "c2"]
