"""The trainer's pure batch rules: decoding into segments, DLQ records, output records."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

import stream_app.trainer.batch
from stream_app.codec import (
    HEADERS_COPIED_MAX,
    META_KEY,
    DlqReason,
    decode_dlq,
    decode_embedding,
    encode_event,
)
from stream_app.config import KafkaConfig, TopicNames
from stream_app.core import LearnerConfig
from stream_app.events import EmbeddingRow, Event, EventKind, Headers, RowBlock
from stream_app.kafka.event_time import EventTimeMerger
from stream_app.kafka.records import RawRecord, next_offsets
from stream_app.trainer import TrainerConfig, make_trainer
from stream_app.trainer.batch import (
    CONTROL_HEADER,
    decode_batch,
    order_key,
    output_records,
    plan_steps,
    train_dlq,
)

TOPICS = TopicNames(prefix="t.")
NOW = 1_700_000_000_000


def _rec(offset: int, value: bytes | None, key: bytes | None = b"u1", topic: str = "t.clicks",
         headers: Headers = ()) -> RawRecord:
    return RawRecord(topic=topic, partition=1, offset=offset, key=key, value=value,
                     timestamp_ms=NOW, headers=headers)


def _event(i: int, ts: int = NOW - 1000, user: str = "u1") -> bytes:
    return encode_event(Event(event_id=f"e{i}", user_id=user, item_id=f"i{i}", ts=ts,
                              kind=EventKind.CLICK))


def test_bad_records_are_dead_lettered_with_coordinates_and_good_ones_kept_in_order() -> None:
    batch = [_rec(0, _event(0)), _rec(1, b"{not json"), _rec(2, _event(2)),
             _rec(3, _event(3, ts=NOW + 10 * 86_400_000)), _rec(4, _event(4), key=b"u2")]
    out = decode_batch(batch, TOPICS, now_ms=NOW, max_future_ms=86_400_000)
    assert [e.event_id for e in out.segments[0]] == ["e0", "e2"]
    assert [r.offset for r in out.records[0]] == [0, 2]
    assert [(d.offset, d.reason) for d in out.dlq] == [
        (1, "not_json"), (3, "bad_timestamp"), (4, "key_mismatch")]
    assert all(d.source_topic == "t.clicks" and d.partition == 1 for d in out.dlq)


def test_a_forget_whose_key_is_no_id_is_dead_lettered_not_applied() -> None:
    """Decoded leniently, b"u\xff" forgot "u\ufffd", a different user; a key with a
    newline or past 256 characters published a tombstone no row can have."""
    def forget(key: bytes | None, offset: int) -> RawRecord:
        return _rec(offset, b'{"type":"forget"}', key=key,
                    headers=((CONTROL_HEADER, b"forget"),))

    out = decode_batch([forget(b"u\xff", 0), forget(b"u\n", 1), forget(b"u" * 257, 2),
                        forget(None, 3), forget(b"u2", 4)], TOPICS, now_ms=NOW,
                       max_future_ms=86_400_000)
    assert out.forgets == ["u2"]
    assert [(d.offset, d.reason) for d in out.dlq] == [
        (0, "bad_utf8"), (1, "bad_id_chars"), (2, "id_too_long"), (3, "missing_key")]
    assert all(d.detail.startswith("forget request: ") for d in out.dlq)  # not a click's


def test_an_unknown_value_of_the_control_header_is_dead_lettered_not_learned() -> None:
    """Any value but b"forget" went on to be decoded as an event: a forget sent as
    "Forget" was learned when its value was an event, or dead-lettered as a click
    missing its fields, and erased nothing either way (review of the DLQ path)."""
    batch = [_rec(0, b'{"type":"forget","user_id":"u1"}', headers=((CONTROL_HEADER, b"Forget"),)),
             _rec(1, _event(1), headers=((CONTROL_HEADER, b"FORGET"),)),
             _rec(2, _event(2), headers=(("trace-id", b"abc"),)),  # other headers: an event
             _rec(3, _event(3), headers=((CONTROL_HEADER, None),))]  # type: ignore[arg-type]
    out = decode_batch(batch, TOPICS, now_ms=NOW, max_future_ms=86_400_000)
    assert out.forgets == [] and [e.event_id for e in out.segments[0]] == ["e2"]
    assert [(d.offset, d.reason) for d in out.dlq] == [(0, "schema"), (1, "schema"),
                                                       (3, "schema")]
    assert "unknown value null" in out.dlq[2].detail
    assert "b'Forget'" in out.dlq[0].detail and CONTROL_HEADER in out.dlq[0].detail


def test_a_forget_header_on_a_record_that_is_no_forget_request_erases_nothing() -> None:
    """The header alone decided: a click sent with it erased its user and was not learned,
    and a value naming another user than the key was ignored (contract review)."""
    headers = ((CONTROL_HEADER, b"forget"),)
    batch = [_rec(0, _event(0), headers=headers),  # a click, with the header by mistake
             _rec(1, b'{"type":"forget","user_id":"u7"}', headers=headers),  # keyed u1
             _rec(2, b"not json", headers=headers),
             _rec(3, b'{"type":"forget","user_id":"u1","request_id":"r"}', headers=headers),
             _rec(4, None, headers=headers), _rec(5, b"", headers=headers)]
    out = decode_batch(batch, TOPICS, now_ms=NOW, max_future_ms=86_400_000)
    assert out.forgets == ["u1"] and out.forget_requests == ["r"]
    assert [(d.offset, d.reason) for d in out.dlq] == [
        (0, "schema"), (1, "key_mismatch"), (2, "not_json"), (4, "missing_value"),
        (5, "missing_value")]


def test_a_forget_naming_a_deeply_nested_user_id_is_dead_lettered_with_the_batch_kept() -> None:
    """Its error message was the value's repr(), which raised RecursionError at 1,000
    levels (orjson reads 1,024): the batch failed and the trainer stopped, on the same
    record at every restart."""
    headers = ((CONTROL_HEADER, b"forget"),)
    deep = b'{"type":"forget","user_id":' + b"[" * 1000 + b"]" * 1000 + b"}"
    out = decode_batch([_rec(0, deep, headers=headers), _rec(1, _event(1))], TOPICS,
                       now_ms=NOW, max_future_ms=86_400_000)
    assert out.forgets == [] and [e.event_id for e in out.segments[0]] == ["e1"]
    assert [(d.offset, d.reason) for d in out.dlq] == [(0, "key_mismatch")]
    assert len(out.dlq[0].detail) < 300


def test_a_decoder_bug_dead_letters_its_record_and_keeps_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything but a DecodeError escaped the batch's decode, so the trainer stopped, and
    stopped again on the same record at every restart (its offset never commits)."""
    real = stream_app.trainer.batch.decode_event

    def buggy(value: bytes | None, key: bytes | None, kind: EventKind) -> Event:
        if value == _event(1):
            raise RecursionError("maximum recursion depth exceeded")
        return real(value, key, kind)

    monkeypatch.setattr(stream_app.trainer.batch, "decode_event", buggy)
    out = decode_batch([_rec(0, _event(0)), _rec(1, _event(1)), _rec(2, _event(2))], TOPICS,
                       now_ms=NOW, max_future_ms=86_400_000)
    assert [e.event_id for e in out.segments[0]] == ["e0", "e2"]
    assert [(d.offset, d.reason) for d in out.dlq] == [(1, "decoder_error")]
    assert "RecursionError" in out.dlq[0].detail


def test_forget_control_records_split_the_batch_in_order() -> None:
    forget = _rec(1, b'{"type":"forget"}', headers=((CONTROL_HEADER, b"forget"),))
    out = decode_batch([_rec(0, _event(0)), forget, _rec(2, _event(2))], TOPICS,
                       now_ms=NOW, max_future_ms=0)
    assert out.forgets == ["u1"]
    assert [[e.event_id for e in seg] for seg in out.segments] == [["e0"], ["e2"]]
    assert next_offsets([_rec(0, None), forget, _rec(2, None)]) == {("t.clicks", 1): 3}


def test_output_records_carry_rows_tombstones_meta_and_dlq() -> None:
    row = EmbeddingRow(entity="user", id="u1", vector=np.ones(4, dtype=np.float32), bias=0.0,
                       model_version="m", updates=2, updated_at=NOW, last_event_ts=NOW)
    dlq = decode_batch([_rec(7, b"[]")], TOPICS, now_ms=NOW, max_future_ms=0).dlq
    meta = {"model_version": "m", "updated_at": NOW}
    out = output_records(TOPICS, [RowBlock.of(row)], ["item:i9"], meta, dlq)
    assert [(o.topic, o.key) for o in out] == [
        ("t.embeddings", b"user:u1"), ("t.embeddings", b"item:i9"),
        ("t.embeddings", META_KEY), ("t.events-dlq", b"t.clicks:1:7")]
    assert decode_embedding(out[0].key, out[0].value) == row
    assert out[1].value is None
    assert decode_dlq(out[3].value).reason == "not_object"


def test_dead_letters_carry_the_source_records_headers_within_the_bound() -> None:
    tags = (("traceparent", b"00-ab-01"), ("null", None))
    big = (("a", b"x" * HEADERS_COPIED_MAX),)
    out = decode_batch([_rec(0, b"[]", headers=tags), _rec(1, b"[]", headers=tags + big)],
                       TOPICS, now_ms=NOW, max_future_ms=0)
    refused = train_dlq(_rec(2, _event(2), headers=tags), DlqReason.RATE_LIMITED, "over", NOW)
    assert [d.headers for d in [*out.dlq, refused]] == [tags, tags, tags]
    records = output_records(TOPICS, [], [], {"model_version": "m", "updated_at": NOW},
                             [*out.dlq, refused])
    assert [r.headers for r in records if r.topic == TOPICS.dlq] == [tags, tags, tags]


def test_a_batch_evaluates_whole_steps_until_eval_max_events_are_scored() -> None:
    (steps,) = plan_steps([10_000], step_max=2000, eval_max=1024)
    assert [(s.start, s.end) for s in steps] == [(i, i + 2000) for i in range(0, 10_000, 2000)]
    assert [s.evaluate for s in steps] == [True, False, False, False, False]
    (small,) = plan_steps([10_000], step_max=1000, eval_max=1024)
    assert [s.evaluate for s in small] == [True, True] + [False] * 8
    (one,) = plan_steps([700], step_max=2000, eval_max=1024)
    assert [(s.start, s.end, s.evaluate) for s in one] == [(0, 700, True)]
    (even,) = plan_steps([2001], step_max=2000, eval_max=1024)
    assert [(s.start, s.end) for s in even] == [(0, 1000), (1000, 2001)]


def test_steps_cover_every_segment_in_order_and_stay_under_step_max() -> None:
    rng = random.Random(4)  # noqa: S311 - test data
    for _ in range(200):
        sizes = [rng.choice([0, 1, rng.randrange(1, 50)]) for _ in range(rng.randrange(1, 5))]
        step_max, eval_max = rng.randrange(1, 12), rng.randrange(1, 40)
        plan = plan_steps(sizes, step_max=step_max, eval_max=eval_max)
        assert len(plan) == len(sizes)
        for size, steps in zip(sizes, plan, strict=True):
            assert [i for s in steps for i in range(s.start, s.end)] == list(range(size))
            assert all(0 < s.end - s.start <= step_max for s in steps)
            assert len(steps) == -(-size // step_max)  # as few as fit
            sizes_here = [s.end - s.start for s in steps]
            assert not steps or max(sizes_here) - min(sizes_here) <= 1
        flat = [s for steps in plan for s in steps]
        scored = [min(s.end - s.start, eval_max) for s in flat if s.evaluate]
        assert [s.evaluate for s in flat] == sorted((s.evaluate for s in flat), reverse=True)
        assert sum(scored[:-1]) < eval_max  # stops once the budget is reached
        if sum(s.end - s.start for s in flat) >= eval_max:
            assert sum(scored) >= eval_max


def test_a_record_past_the_future_allowance_does_not_hold_back_its_partition() -> None:
    """Ordered by its own ts, a record ten days ahead kept partition 0's later
    records queued while partition 1 had older ones: here, all of them."""
    def rec(partition: int, offset: int, ts: int) -> RawRecord:
        return RawRecord(topic="t.clicks", partition=partition, offset=offset, key=b"u",
                         value=b'{"ts": %d}' % ts, timestamp_ms=NOW)

    far = NOW + 10 * 86_400_000
    merger = EventTimeMerger(lambda r: order_key(r, NOW, 86_400_000))
    merger.add([rec(0, 0, NOW - 6), rec(0, 1, far), rec(0, 2, NOW - 4), rec(0, 3, NOW - 2)])
    merger.add([rec(1, 0, NOW - 5), rec(1, 1, NOW - 3), rec(1, 2, NOW - 1)])
    out = merger.release(10, waiting_for=[("t.clicks", 0), ("t.clicks", 1)])
    assert [(r.partition, r.offset) for r in out] == [
        (0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (0, 3)]  # then partition 0 is empty: wait


def test_the_trainer_orders_by_order_key_with_its_future_allowance() -> None:
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:1")
    trainer = make_trainer(kafka, TrainerConfig(max_future_ms=60_000), LearnerConfig(dim=8))
    now = int(time.time() * 1000)

    def rec(ts: int) -> RawRecord:
        return RawRecord("t.clicks", 0, 0, b"u", b'{"ts": %d}' % ts, now)

    assert now <= trainer._order_key(rec(now + 30_000)) <= int(time.time() * 1000)  # as now
    assert trainer._order_key(rec(now - 30_000)) == now - 30_000
    assert trainer._order_key(rec(now + 600_000)) == -1


def test_a_record_from_a_clock_ahead_goes_out_as_now_among_live_records() -> None:
    """Within the future allowance, its own ts (20 h ahead) held it, and every later record
    of its partition, until the other partitions' live events caught up with it: 20 hours
    (consumer review)."""
    clock = [NOW]
    merger = EventTimeMerger(lambda r: order_key(r, clock[0], 86_400_000))

    def rec(partition: int, offset: int, ts: int) -> RawRecord:
        return RawRecord(topic="t.clicks", partition=partition, offset=offset, key=b"u",
                         value=b'{"ts": %d}' % ts, timestamp_ms=clock[0])

    merger.add([rec(0, 0, NOW + 20 * 3_600_000)])
    out: list[RawRecord] = []
    behind = [("t.clicks", 0), ("t.clicks", 1)]
    for step in range(1, 20):  # live: a record on each partition every 0.5 s
        clock[0] = NOW + 500 * step
        merger.add([rec(0, step, clock[0]), rec(1, step, clock[0])])
        out += merger.release(100, behind, now=0.5 * step)
        out += merger.release_due(100, behind, now=0.5 * step)
    assert [r.offset for r in out if r.partition == 0][:3] == [0, 1, 2]
