"""A decoded batch through the learner, without a broker: forgets in order, refusals to
the DLQ, counts for the commit."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

from stream_app.codec import encode_event
from stream_app.config import TopicNames
from stream_app.core import Learner, LearnerConfig
from stream_app.events import Event, EventKind
from stream_app.kafka.client_logs import Repeats
from stream_app.kafka.records import RawRecord
from stream_app.observability.metrics import EventOutcome, TrainerMetrics
from stream_app.trainer.batch import CONTROL_HEADER, decode_batch, misrouted
from stream_app.trainer.observe import report_misrouted
from stream_app.trainer.steps import Changes, CountedRequests, learn_batch

TOPICS = TopicNames(prefix="t.")
NOW = 1_700_000_000_000
CONFIG = LearnerConfig(dim=8, num_sampled_negatives=8, eval_max_items=100, eval_max_events=4)


def _metrics() -> TrainerMetrics:
    return TrainerMetrics(CollectorRegistry(), k=20, input_topics=[TOPICS.clicks],
                          dlq_reasons=["event_id_reused"])


def _click(offset: int, user: str, item: str, event_id: str | None = None,
           ts: int | None = None) -> RawRecord:
    if ts is None:
        ts = NOW - 10_000 + (0 if event_id else offset)
    event = Event(event_id=event_id or f"e{offset}", user_id=user, item_id=item, ts=ts,
                  kind=EventKind.CLICK)
    return RawRecord(topic=TOPICS.clicks, partition=0, offset=offset, key=user.encode(),
                     value=encode_event(event), timestamp_ms=NOW - 5_000 + offset)


def _forget(offset: int, user: str, request: str | None = None,
            topic: str = TOPICS.clicks) -> RawRecord:
    value = b'{"type":"forget"}' if request is None else \
        b'{"type":"forget","request_id":"%s"}' % request.encode()
    return RawRecord(topic=topic, partition=0, offset=offset, key=user.encode(),
                     value=value, timestamp_ms=NOW, headers=((CONTROL_HEADER, b"forget"),))


def _learn(records: list[RawRecord], learner: Learner, step_max: int = 3) -> Changes:
    decoded = decode_batch(records, TOPICS, now_ms=NOW, max_future_ms=0)
    return learn_batch(learner, decoded, step_max=step_max, now_ms=NOW, metrics=_metrics())


def test_a_forget_between_segments_drops_the_user_learned_before_it_only(
        caplog: pytest.LogCaptureFixture) -> None:
    learner = Learner(CONFIG, device="cpu")
    batch = [_click(0, "u1", "a"), _click(1, "u2", "b"), _click(2, "u1", "c"),
             _forget(3, "u1"), _click(4, "u3", "a"), _forget(5, "u3"), _click(6, "u3", "d")]
    with caplog.at_level("INFO", logger="stream_app.trainer.steps"):
        out = _learn(batch, learner)
    assert "forget user=u1: row dropped" in caplog.text  # an operator can see it happened
    assert out.counts.forgets == 2  # stream_app_forgets_total, once the batch commits
    assert out.tombstones == ["user:u1", "user:u3"]
    assert out.users == {"u2", "u3"}  # u3 came back after its forget, in the same batch
    assert "u1" not in learner.user_ids() and "u3" in learner.user_ids()
    assert out.items == {"a", "b", "c", "d"}
    assert out.applied == 5 and sum(n for _, n in out.counts.losses) == 5
    assert not out.dlq


def test_one_forget_request_is_counted_and_logged_once_for_its_two_records(
        caplog: pytest.LogCaptureFixture) -> None:
    """`stream-app forget` writes a record on each event topic; both were counted (the
    metric read 2 for one request) and the second was logged as "no row here"."""
    learner = Learner(CONFIG, device="cpu")
    batch = [_click(0, "u1", "a"), _forget(1, "u1", "r1"),
             _forget(0, "u1", "r1", topic=TOPICS.purchases),
             _forget(2, "u2", "r2"), _forget(1, "u2", "r2", topic=TOPICS.purchases),
             _forget(3, "u3", "r2")]  # a request id reused for another user: its own erasure
    with caplog.at_level("INFO", logger="stream_app.trainer.steps"):
        out = _learn(batch, learner)
    assert out.counts.forgets == 3 and "forget user=u3" in caplog.text
    assert caplog.text.count("forget user=u1") == 1 and "no row here" in caplog.text  # u2
    assert "u1" not in learner.user_ids()
    assert out.tombstones == ["user:u1", "user:u1", "user:u2", "user:u2", "user:u3"]


def test_a_request_whose_halves_go_out_in_two_batches_is_counted_once() -> None:
    """A half goes out alone after BARRIER_WAIT_S and its partner in a later batch: each
    batch counted the request. What a committed batch counted is remembered; an aborted
    batch's is not, so its requests count when it is read again."""
    learner = Learner(CONFIG, device="cpu")
    counted = CountedRequests()
    first = learn_batch(learner, decode_batch([_forget(0, "u1", "r1")], TOPICS, now_ms=NOW,
                                              max_future_ms=0),
                        step_max=3, now_ms=NOW, metrics=_metrics(), counted=counted)
    assert first.counts.forgets == 1 and first.counts.forget_requests == {("u1", "r1")}
    second_half = decode_batch([_forget(0, "u1", "r1", topic=TOPICS.purchases)], TOPICS,
                               now_ms=NOW, max_future_ms=0)
    aborted = learn_batch(learner, second_half, step_max=3, now_ms=NOW, metrics=_metrics(),
                          counted=counted)
    assert aborted.counts.forgets == 1  # the first batch was not committed: not remembered
    counted.add(first.counts.forget_requests)  # what the trainer does at the commit
    again = learn_batch(learner, second_half, step_max=3, now_ms=NOW, metrics=_metrics(),
                        counted=counted)
    assert again.counts.forgets == 0 and again.tombstones == ["user:u1"]


def test_a_reused_event_id_is_dead_lettered_and_counted_not_applied() -> None:
    learner = Learner(CONFIG, device="cpu")
    batch = [_click(0, "u1", "a", event_id="x"), _click(1, "u1", "a", event_id="x"),  # a copy
             _click(2, "u2", "b", event_id="x"), _click(3, "u2", "c")]  # "x" with other content
    out = _learn(batch, learner, step_max=10)
    assert [(d.offset, d.reason) for d in out.dlq] == [(2, "event_id_reused")]
    assert out.applied == 2
    assert out.counts.events == {(TOPICS.clicks, EventOutcome.APPLIED): 2,
                                 (TOPICS.clicks, EventOutcome.DUPLICATE): 1,
                                 (TOPICS.clicks, EventOutcome.DLQ): 1}
    assert [produced for _, produced in out.counts.applied_times] == [NOW - 5_000, NOW - 4_997]


def test_only_the_planned_steps_are_evaluated() -> None:
    """`eval_max_events` 4 with steps of 3: the first two steps are scored, not the third."""
    learner = Learner(CONFIG, device="cpu")
    _learn([_click(i, f"u{i % 3}", f"i{i % 4}") for i in range(9)], learner)  # a model first
    out = _learn([_click(10 + i, f"u{i % 3}", f"i{i % 4}") for i in range(9)], learner)
    assert sum(e.n_events for e in out.evals) == 6


def test_gradients_still_accumulating_are_applied_with_the_batch() -> None:
    """With `accumulate_steps` 3, two steps leave gradients cached: the batch commits
    them too, so nothing learned is left out of what it publishes."""
    learner = Learner(dataclasses.replace(CONFIG, accumulate_steps=3, replay_ratio=0),
                      device="cpu")
    _learn([_click(i, f"u{i % 4}", f"i{i % 15}") for i in range(30)], learner)  # rows first
    users, items = [f"u{n}" for n in range(4)], [f"i{n}" for n in range(15)]
    before = _vectors(learner, users, items)
    out = _learn([_click(100 + i, f"u{i % 2}", f"i{i % 3}") for i in range(6)], learner)
    assert out.applied == 6
    assert learner.apply_pending() == ((), ())  # nothing left for the next batch
    after = _vectors(learner, users, items)
    moved = {key for key in before if not torch.equal(before[key], after[key])}
    # Applied, not dropped (test review: a learn_batch that discarded them passed) ...
    assert {"user:u0", "user:u1", "item:i0", "item:i1", "item:i2"} <= moved
    assert moved - {"item:i0", "item:i1", "item:i2"}, "no negative outside the batch moved"
    # ... and every row they moved is published, sampled negatives included.
    assert moved <= {f"user:{u}" for u in out.users} | {f"item:{i}" for i in out.items}


def _vectors(learner: Learner, users: list[str], items: list[str]) -> dict[str, torch.Tensor]:
    def row(vocab: Any, id_: str) -> int:
        at = vocab.row(id_)
        assert at is not None, id_
        return int(at)
    return {**{f"user:{u}": learner._users.vec[row(learner._user_vocab, u)].clone()
               for u in users},
            **{f"item:{i}": learner._items.vec[row(learner._item_vocab, i)].clone()
               for i in items}}


def test_an_event_years_ahead_of_a_replayed_step_is_dead_lettered() -> None:
    """Within the wall clock's allowance (a replay of old events), so only the learner's
    guard against its clock jumping (`max_time_jump_ms`) catches it."""
    learner = Learner(CONFIG, device="cpu")
    old = NOW - 400 * 86_400_000
    batch = [*(_click(k, f"u{k % 2}", f"i{k}", ts=old + k) for k in range(5)),
             _click(5, "u2", "i9", ts=NOW - 86_400_000)]
    out = _learn(batch, learner, step_max=10)
    assert [(d.offset, d.reason) for d in out.dlq] == [(5, "bad_timestamp")]
    assert out.applied == 5 and "u2" not in out.users


def test_a_step_that_trained_nothing_gives_no_loss_to_the_gauge() -> None:
    """Events below the admission threshold count but train nothing; their step's loss
    of 0.0 went into stream_app_training_loss, weighted by those events, pulling the
    gauge (and TrainingLossRising's baseline) down."""
    learner = Learner(dataclasses.replace(CONFIG, admission_threshold=3), device="cpu")
    out = _learn([_click(n, f"u{n}", f"new{n}") for n in range(4)], learner, step_max=10)
    assert out.applied == 4 and out.counts.losses == []


def test_rows_the_learner_evicts_become_tombstones_and_are_not_published() -> None:
    """Rows pushed out by the cap or idle past the TTL get tombstones, so the scorer drops
    them too; no unit or integration test evicted anything (helper review)."""
    learner = Learner(dataclasses.replace(CONFIG, max_items=2, idle_ttl_ms=1_000), device="cpu")
    batch = [_click(0, "u1", "a", ts=NOW - 5_400), _click(1, "u1", "b", ts=NOW - 5_400),
             # c takes a's row (the cap; a and b tie on time, a goes first by id) ...
             _click(2, "u2", "c", ts=NOW - 5_000), _click(3, "u2", "c", ts=NOW - 5_000),
             # ... and 2 s on, u1, u2 and b are idle past the TTL.
             _click(4, "u3", "c", ts=NOW - 3_000), _click(5, "u3", "c", ts=NOW - 3_000)]
    out = _learn(batch, learner, step_max=2)  # three steps of two
    assert sorted(out.tombstones) == ["item:a", "item:b", "user:u1", "user:u2"]
    assert out.tombstones.index("item:a") < out.tombstones.index("item:b")
    assert out.users == {"u3"} and out.items == {"c"}
    assert sorted(learner.user_ids()) == ["u3"]


def test_events_off_both_common_partitioners_are_found_misrouted() -> None:
    """u1 is CRC-32's partition 2 and murmur2's 1 of 3 (`kafka.partitioners`); a record of
    u1 on 0 comes from neither, as does one on a partition a topic does not have yet."""
    def on(partition: int, offset: int, user: str = "u1") -> RawRecord:
        return dataclasses.replace(_click(offset, user, "a"), partition=partition)

    records = [on(2, 0), on(1, 1), on(0, 2), on(0, 3, user="u2"), on(5, 4, user="u2")]
    decoded = decode_batch(records, TOPICS, now_ms=NOW, max_future_ms=0)
    assert [r.offset for r in misrouted(decoded, {TOPICS.clicks: 3})] == [2, 4]
    assert misrouted(decoded, {}) == []  # counts not known yet: nothing is judged


def test_a_misrouted_forget_request_is_found_counted_and_said_as_an_error(
        caplog: pytest.LogCaptureFixture) -> None:
    """With two trainers, the one that owns u1's row never sees a forget on another
    partition: the row stays, and nothing said so."""
    records = [dataclasses.replace(_forget(0, "u1"), partition=2),  # CRC-32's partition
               dataclasses.replace(_click(1, "u1", "a"), partition=0),
               dataclasses.replace(_forget(2, "u1"), partition=0),
               dataclasses.replace(_forget(3, "u2"), partition=2)]  # u2: 1 or 0
    decoded = decode_batch(records, TOPICS, now_ms=NOW, max_future_ms=0)
    wrong = misrouted(decoded, {TOPICS.clicks: 3})
    assert [r.offset for r in wrong] == [1, 2, 3]
    metrics = _metrics()
    with caplog.at_level("WARNING", logger="stream_app.trainer.observe"):
        report_misrouted(metrics, wrong, {TOPICS.clicks: 3}, Repeats())
    assert metrics.registry.get_sample_value(
        "stream_app_events_misrouted_total", {"topic": TOPICS.clicks}) == 3
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said[0][0] == "WARNING" and "misrouted events on" in said[0][1]
    # Each forget is named, whatever the window: each user must be forgotten again.
    assert [(level, line.split(":")[0], line.split("'")[1]) for level, line in said[1:]] == [
        ("ERROR", f"misrouted forget request on {TOPICS.clicks}", "u1"),
        ("ERROR", f"misrouted forget request on {TOPICS.clicks}", "u2")]


def test_misrouted_events_are_counted_each_and_said_once_a_window(
        caplog: pytest.LogCaptureFixture) -> None:
    metrics = _metrics()
    said = Repeats(clock=iter([0.0, 1.0, 2.0, 40.0]).__next__)
    wrong = [dataclasses.replace(_click(n, "u1", "a"), partition=0) for n in range(3)]
    with caplog.at_level("WARNING", logger="stream_app.trainer.observe"):
        report_misrouted(metrics, wrong, {TOPICS.clicks: 3}, said)  # 3 events, said once
        report_misrouted(metrics, wrong[:1], {TOPICS.clicks: 3}, said)  # 40 s on: said again
    assert metrics.registry.get_sample_value(
        "stream_app_events_misrouted_total", {"topic": TOPICS.clicks}) == 4
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "user 'u1' is on partition 0, where librdkafka's default partitioner puts it on 2 " \
        "and Java's on 1" in lines[0]
    assert "(and 2 more like it since 40s ago)" in lines[1]
