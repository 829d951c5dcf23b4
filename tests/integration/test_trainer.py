"""The trainer against the real broker: rows out, DLQ, restore, forget, exactly-once audit."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

from stream_app.codec import (
    decode_dlq,
    decode_embedding,
    encode_embedding,
    encode_event,
    is_meta_key,
)
from stream_app.config import KafkaConfig
from stream_app.core import LearnerConfig
from stream_app.events import EmbeddingRow, Event, EventKind
from stream_app.kafka.admin import admin_client
from stream_app.kafka.ends import high_watermarks
from stream_app.kafka.exceptions import TopicError
from stream_app.kafka.produce import EventProducer, Outgoing
from stream_app.replay import produce_records
from stream_app.sources import RawRecord, to_record
from stream_app.sources.generate import generate
from stream_app.trainer import BatchResult, Trainer, TrainerConfig, make_trainer
from stream_app.trainer.batch import CONTROL_HEADER
from stream_app.trainer.control import send_forget
from stream_app.trainer.snapshot import read_snapshot
from tests.integration.kafka_helpers import read_topic, wait_until
from tests.reliability.harness import committed_total, end_total

T0 = 1_700_000_000_000  # event times are milliseconds from 1973 on; tests add small offsets

LEARNER = LearnerConfig(dim=8, num_sampled_negatives=16, eval_max_items=1000)


def _cfg(**kw: object) -> TrainerConfig:
    base: dict[str, object] = {"batch_max": 100, "batch_wait_ms": 100, "metrics_port": 0,
                               "exit_when_idle": 2.0}
    base.update(kw)
    return TrainerConfig(**base)  # type: ignore[arg-type]


def run_until_idle(kafka: KafkaConfig, cfg: TrainerConfig,
                   learner: LearnerConfig = LEARNER) -> Trainer:
    """Run a trainer until its input is drained (`exit_when_idle`), like a batch job."""
    trainer = make_trainer(kafka, cfg, learner)
    assert trainer.run() == 0
    return trainer


def latest_rows(kafka: KafkaConfig) -> dict[str, EmbeddingRow | None]:
    rows: dict[str, EmbeddingRow | None] = {}
    for msg in read_topic(kafka.bootstrap_servers, kafka.topics.embeddings):
        if is_meta_key(msg.key()):
            continue
        rows[msg.key().decode()] = decode_embedding(msg.key(), msg.value())
    return rows


def _state_bytes(state: object) -> object:
    """Learner-private row state with arrays as bytes, so equality is bit-exact."""
    if isinstance(state, dict):
        return {k: _state_bytes(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return (state.dtype.str, state.shape, state.tobytes())
    return state


def produce(kafka: KafkaConfig, records: list[RawRecord]) -> None:
    produce_records(kafka, records, total=None, rate=0, progress=False, label="test")


def _updates(rows: dict[str, EmbeddingRow]) -> Counter[str]:
    """Events learned per user, as the published `user:<id>` rows count them (a sum alone
    hid errors that cancel out: one user's event applied to another; test review)."""
    return Counter({key.removeprefix("user:"): row.updates for key, row in rows.items()})


@pytest.mark.parametrize("step_max", [100, 7], ids=["one-step", "many-steps"])
def test_rows_published_with_exact_update_counts_and_bad_input_dead_lettered(
        kafka: KafkaConfig, step_max: int) -> None:
    records = list(generate(600, n_users=40, n_items=30, seed=3, malformed_share=0.05))
    produce(kafka, records)
    valid = [r.event for r in records if r.event is not None]
    produce(kafka, [r for r in records if r.event is not None][:50])  # re-sent: duplicates
    bad = [r for r in records if r.event is None]
    assert bad, "the generator should have made malformed records"

    trainer = make_trainer(kafka, _cfg(step_max=step_max), LEARNER)
    batches: list[BatchResult] = []
    trainer.on_batch = batches.append
    assert trainer.run() == 0
    # Each transaction learned its batch in steps of at most step_max events.
    steps = trainer.learner.global_state()["step"]
    assert steps >= sum(-(-b.applied // step_max) for b in batches) > 0
    if step_max < 100:
        assert steps > len(batches)
    row_records = [m for m in read_topic(kafka.bootstrap_servers, kafka.topics.embeddings)
                   if not is_meta_key(m.key()) and m.value() is not None]
    assert len(row_records) == sum(b.rows for b in batches)  # what the batches say they wrote

    rows = latest_rows(kafka)
    users = {k: r for k, r in rows.items() if k.startswith("user:") and r}
    items = {k: r for k, r in rows.items() if k.startswith("item:") and r}
    assert set(users) == {f"user:{e.user_id}" for e in valid}
    assert set(items) == {f"item:{e.item_id}" for e in valid}
    per_user = Counter(e.user_id for e in valid)
    assert {k[5:]: r.updates for k, r in users.items()} == dict(per_user)
    assert sum(r.updates for r in items.values()) == len(valid)
    # Freshness observes applied events only: the 50 duplicates published no row.
    assert trainer.metrics.registry.get_sample_value(
        "stream_app_freshness_seconds_count", {"since": "produce_time"}) == len(valid)
    admitted = trainer.metrics.admissions
    assert admitted.labels(table="user")._value.get() == len(users)  # noqa: SLF001
    assert admitted.labels(table="item")._value.get() == len(items)  # noqa: SLF001

    dlq = [decode_dlq(m.value()) for m in read_topic(kafka.bootstrap_servers, kafka.topics.dlq)]
    assert Counter(d.reason for d in dlq) == Counter(str(r.expected_reason) for r in bad)
    assert all(d.offset >= 0 and d.source_topic in (kafka.topics.clicks, kafka.topics.purchases)
               for d in dlq)


@pytest.mark.parametrize("accumulate", [1, 3], ids=["apply-every-step", "accumulate-3"])
def test_restart_restores_published_rows_and_resumes_from_committed_offsets(
        kafka: KafkaConfig, accumulate: int) -> None:
    """With accumulated gradients too: what a transaction leaves cached is applied and
    published before it commits, or a restart would lose it."""
    learner = dataclasses.replace(LEARNER, accumulate_steps=accumulate)
    first = list(generate(400, n_users=30, n_items=25, seed=5))
    produce(kafka, first)
    running = run_until_idle(kafka, _cfg(), learner)
    assert running.learner.apply_pending() == ((), ())  # nothing committed yet unpublished
    published = {k: r for k, r in latest_rows(kafka).items() if r}
    users = sorted(k[5:] for k in published if k.startswith("user:"))
    items = sorted(k[5:] for k in published if k.startswith("item:"))
    assert set(users) == set(running.learner.user_ids())
    assert set(items) == set(running.learner.item_ids())

    restored = make_trainer(kafka, _cfg(), learner)
    restored._restore()  # the same restore the trainer runs at start-up
    for table, ids in (("user", users), ("item", items)):  # shown before any commit
        for metric in ("stream_app_table_rows", "stream_app_restored_rows"):
            assert restored.metrics.registry.get_sample_value(
                metric, {"table": table}) == len(ids), metric
    before = running.learner.rows(user_ids=users, item_ids=items, model_version="v", now_ms=0)
    after = restored.learner.rows(user_ids=users, item_ids=items, model_version="v", now_ms=0)
    assert [r.key for r in after] == [r.key for r in before]
    for old, new in zip(before, after, strict=True):
        assert new == old, old.key  # ids, bias, updates, times, recent items
        assert new.vector.tobytes() == old.vector.tobytes(), old.key
        assert _state_bytes(new.state) == _state_bytes(old.state), old.key
    for row in after:  # item vectors change only when published, so they match the topic
        if row.entity == "item":
            assert row.vector.tobytes() == published[row.key].vector.tobytes(), row.key
    assert restored.learner.global_state() == running.learner.global_state()

    second = list(generate(300, n_users=30, n_items=25, seed=6))
    produce(kafka, second)
    run_until_idle(kafka, _cfg(), learner)
    users = {k: r for k, r in latest_rows(kafka).items() if k.startswith("user:") and r}
    valid = [r.event for r in first + second if r.event is not None]
    # Nothing lost, nothing applied twice (or to another user) across the restart.
    assert _updates(users) == Counter(e.user_id for e in valid)


def test_snapshot_restore_keeps_the_dedup_window_and_equals_the_changelog_restore(
        kafka: KafkaConfig, tmp_path: Path) -> None:
    snap = _cfg(snapshot_dir=str(tmp_path))
    first = list(generate(300, n_users=25, n_items=20, seed=8))
    produce(kafka, first)
    one = run_until_idle(kafka, snap)  # a clean stop writes the snapshot
    assert one.metrics.snapshot_written._value.get() > 0  # noqa: SLF001
    # What SnapshotStale compares the age with (0 would mean snapshots are off).
    assert one.metrics.snapshot_interval._value.get() == snap.snapshot_interval_s  # noqa: SLF001

    second = list(generate(200, n_users=25, n_items=20, seed=9))
    produce(kafka, second + first[:50])  # the last 50: a producer re-sending old events
    two = run_until_idle(kafka, snap)
    assert two.metrics.restore_snapshot_age._value.get() >= 0  # noqa: SLF001
    users = {k: r for k, r in latest_rows(kafka).items() if k.startswith("user:") and r}
    valid = [r.event for r in first + second if r.event is not None]
    assert _updates(users) == Counter(e.user_id for e in valid)  # re-sent ones not applied

    def counted(outcome: str) -> float:  # recognised as duplicates, not refused (review)
        return sum(two.metrics.registry.get_sample_value(
            "stream_app_events_total", {"topic": t, "outcome": outcome}) or 0.0
            for t in (kafka.topics.clicks, kafka.topics.purchases))
    assert counted("duplicate") == sum(r.event is not None for r in first[:50]) > 0
    assert counted("dlq") == sum(r.event is None for r in second + first[:50])

    produce(kafka, list(generate(200, n_users=30, n_items=25, seed=10)))
    run_until_idle(kafka, _cfg())  # rows after the snapshot: the tail a restore must read
    from_snapshot, whole = make_trainer(kafka, snap, LEARNER), make_trainer(kafka, _cfg(), LEARNER)
    from_snapshot._restore()
    whole._restore()
    assert whole.metrics.restore_snapshot_age._value.get() == -1  # noqa: SLF001
    assert from_snapshot.metrics.restore_snapshot_age._value.get() >= 0  # noqa: SLF001
    ids = {"user_ids": sorted(whole.learner.user_ids()),
           "item_ids": sorted(whole.learner.item_ids())}
    assert sorted(from_snapshot.learner.user_ids()) == ids["user_ids"]
    a = from_snapshot.learner.rows(**ids, model_version="v", now_ms=0)
    b = whole.learner.rows(**ids, model_version="v", now_ms=0)
    for x, y in zip(a, b, strict=True):
        assert x == y, x.key
        assert x.vector.tobytes() == y.vector.tobytes(), x.key
        assert _state_bytes(x.state) == _state_bytes(y.state), x.key
    assert from_snapshot.learner.global_state() == whole.learner.global_state()


def test_no_snapshot_is_tagged_past_a_row_the_trainer_did_not_write(
        kafka: KafkaConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A restore from a snapshot reads only the changelog after the snapshot's tag.
    Tagged with the changelog's end at writing time, a snapshot taken after someone
    else wrote a row (here a plain producer, between two of the trainer's batches)
    hid that row from every later restore. The trainer now tags a snapshot only
    with ends its own commits account for, and skips it otherwise."""
    caplog.set_level(logging.INFO, logger="stream_app")
    snap = _cfg(snapshot_dir=str(tmp_path))
    produce(kafka, list(generate(300, n_users=25, n_items=20, seed=14)))
    # One due after every batch: written right after a commit, once its markers land.
    run_until_idle(kafka, dataclasses.replace(snap, snapshot_interval_s=0.001))
    assert caplog.text.count("wrote snapshot") >= 2  # mid-run and at the stop
    assert "snapshot skipped" not in caplog.text
    written = (tmp_path / f"{snap.transactional_id}.snapshot").stat().st_mtime_ns

    some = next(r for k, r in latest_rows(kafka).items()
                if k.startswith("user:") and r is not None)
    copy = dataclasses.replace(some, id="foreign")

    def write_foreign_row_once(result: BatchResult) -> None:
        if trainer.on_batch is not None:
            trainer.on_batch = None
            foreign = Producer({"bootstrap.servers": kafka.bootstrap_servers})
            foreign.produce(kafka.topics.embeddings, key=copy.key.encode(),
                            value=encode_embedding(copy))
            assert foreign.flush(10) == 0

    produce(kafka, list(generate(300, n_users=25, n_items=20, seed=15)))
    caplog.clear()
    # Due after every batch and idle poll: said once, not at each (it was, while idle).
    trainer = make_trainer(kafka, dataclasses.replace(snap, snapshot_interval_s=0.001), LEARNER)
    trainer.on_batch = write_foreign_row_once
    assert trainer.run() == 0
    assert trainer.on_batch is None  # the foreign row was written mid-run
    assert caplog.text.count("may hold rows this trainer did not write") == 1
    assert (tmp_path / f"{snap.transactional_id}.snapshot").stat().st_mtime_ns == written

    again = make_trainer(kafka, snap, LEARNER)
    again._restore()
    assert again.metrics.restore_snapshot_age._value.get() >= 0  # noqa: SLF001  (the first one)
    assert "foreign" in again.learner.user_ids()


def test_an_idle_trainer_snapshots_its_last_batches_once(
        kafka: KafkaConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A snapshot was due only after a batch: a trainer whose traffic stopped kept its
    last batches out of every snapshot until it stopped, so a crash while idle cost
    a longer restore and could apply re-sent events again. It now writes one once
    due while idle, and only one: an idle trainer with nothing new writes none."""
    caplog.set_level(logging.INFO, logger="stream_app")
    snap = _cfg(snapshot_dir=str(tmp_path), snapshot_interval_s=1.0, exit_when_idle=None)
    produce(kafka, list(generate(300, n_users=25, n_items=20, seed=16)))
    stop = threading.Event()
    trainer = make_trainer(kafka, snap, LEARNER, stop=stop)

    def not_due_after_a_batch(result: BatchResult) -> None:
        trainer._snapshot_at = time.monotonic()  # as if one had just been written

    trainer.on_batch = not_due_after_a_batch
    runner = threading.Thread(target=trainer.run, daemon=True)
    runner.start()
    path = tmp_path / f"{snap.transactional_id}.snapshot"
    inputs = [kafka.topics.clicks, kafka.topics.purchases]

    def holds_the_last_batch() -> bool:
        found = read_snapshot(path)
        ends = high_watermarks(kafka, kafka.topics.embeddings, client_id="test-ends")
        return found is not None and found[0].ends == ends

    try:
        wait_until(lambda: committed_total(kafka, snap.group_id, inputs)
                   >= end_total(kafka, inputs), timeout=60, what="the input drained")
        wait_until(holds_the_last_batch, timeout=30, what="a snapshot of the last batch")
        written = caplog.text.count("wrote snapshot")
        stop.wait(3.5)  # three more intervals, idle
        assert caplog.text.count("wrote snapshot") == written
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive()


def test_a_dead_letter_keeps_the_headers_of_its_source_record(kafka: KafkaConfig) -> None:
    """A trace id or producer tag on a bad event must travel with it to `events-dlq`."""
    tags = (("traceparent", b"00-4bf92f3577b34da6-00f067aa0ba902b7-01"), ("empty", None))
    good = Event(event_id="e1", user_id="u1", item_id="i1", ts=T0, kind=EventKind.CLICK)
    with EventProducer(kafka, client_id="test") as producer:
        producer.send(Outgoing(kafka.topics.clicks, b"u1", b'{"event_id": "e0"}', headers=tags))
        producer.send(Outgoing(kafka.topics.clicks, b"u1", encode_event(good), headers=tags))
    run_until_idle(kafka, _cfg())
    [dead] = read_topic(kafka.bootstrap_servers, kafka.topics.dlq)
    assert decode_dlq(dead.value()).reason == "missing_field"
    assert dead.headers() == list(tags)
    assert latest_rows(kafka)["user:u1"] is not None  # the good one was learned


def test_forget_publishes_a_tombstone(kafka: KafkaConfig) -> None:
    records = list(generate(200, n_users=10, n_items=20, seed=7))
    produce(kafka, records)
    victim = next(r.event.user_id for r in records if r.event is not None)
    send_forget(kafka, victim)
    send_forget(kafka, "never-seen")  # no row here, but one could be in the changelog
    run_until_idle(kafka, _cfg())
    rows = latest_rows(kafka)
    assert f"user:{victim}" in rows and rows[f"user:{victim}"] is None
    assert "user:never-seen" in rows and rows["user:never-seen"] is None
    others = [k for k, r in rows.items() if k.startswith("user:") and r is not None]
    assert others


def test_a_user_forgotten_then_seen_again_in_one_transaction_keeps_the_new_row(
        kafka: KafkaConfig) -> None:
    """The forget's tombstone must not follow, and so delete, the row re-created after it."""
    def click(i: int) -> Outgoing:
        event = Event(event_id=f"e{i}", user_id="u1", item_id=f"i{i % 3}", ts=T0 + i,
                      kind=EventKind.CLICK)
        return Outgoing(kafka.topics.clicks, b"u1", encode_event(event))

    forget = Outgoing(kafka.topics.clicks, b"u1", b'{"type":"forget","user_id":"u1"}',
                      headers=((CONTROL_HEADER, b"forget"),))
    with EventProducer(kafka, client_id="test") as producer:  # one partition, in this order
        for out in [*map(click, range(5)), forget, *map(click, range(5, 8))]:
            producer.send(out)

    trainer = make_trainer(kafka, _cfg(batch_max=1000), LEARNER)
    batches: list[BatchResult] = []
    trainer.on_batch = batches.append
    assert trainer.run() == 0
    assert [b.events for b in batches] == [9]  # else the case under test did not happen
    row = latest_rows(kafka)["user:u1"]
    assert row is not None and row.updates == 3  # learned from the three clicks after it
    restored = make_trainer(kafka, _cfg(), LEARNER)
    restored._restore()
    assert restored.learner.user_ids() == ["u1"]


def test_a_held_forget_half_is_not_idleness(kafka: KafkaConfig) -> None:
    """A request's clicks half whose purchases half never came waits BARRIER_WAIT_S (10 s)
    in the consumer, then goes out alone. With `exit_when_idle` under that, the trainer
    counted the wait as idle and exited, the forget neither applied nor committed."""
    def click(i: int) -> Outgoing:
        event = Event(event_id=f"e{i}", user_id="u1", item_id=f"i{i}", ts=T0 + i,
                      kind=EventKind.CLICK)
        return Outgoing(kafka.topics.clicks, b"u1", encode_event(event))

    half = Outgoing(kafka.topics.clicks, b"u1",
                    b'{"type":"forget","user_id":"u1","request_id":"r1"}',
                    headers=((CONTROL_HEADER, b"forget"),))
    with EventProducer(kafka, client_id="test") as producer:
        for out in [click(0), click(1), half]:
            producer.send(out)

    trainer = run_until_idle(kafka, _cfg(exit_when_idle=2.0))
    assert latest_rows(kafka)["user:u1"] is None  # the tombstone
    assert trainer.learner.user_ids() == []
    topics = [kafka.topics.clicks, kafka.topics.purchases]
    assert committed_total(kafka, trainer.cfg.group_id, topics) == end_total(kafka, topics)


def test_a_forget_deletes_what_came_before_it_on_both_topics_and_keeps_what_came_after(
        kafka: KafkaConfig) -> None:
    """The request's two records go out together (`event_time`'s barriers). Released one
    by one in event-time order, u1's later clicks went out before their earlier purchase
    and the purchases half of the forget then deleted them (u1 had no row left), and
    the mirrored case lost u2's later purchase."""
    def event(n: int, user: str, kind: EventKind, ts: int) -> Outgoing:
        purchase = kind is EventKind.PURCHASE
        ev = Event(event_id=f"{user}-{n}", user_id=user, item_id=f"i{n}", ts=T0 + ts, kind=kind,
                   quantity=1 if purchase else None, price=2.5 if purchase else None)
        topic = kafka.topics.purchases if purchase else kafka.topics.clicks
        return Outgoing(topic, user.encode(), encode_event(ev))

    click, buy = EventKind.CLICK, EventKind.PURCHASE
    before = [event(0, "u1", click, 1_000), event(1, "u1", click, 1_001),
              event(2, "u1", buy, 5_000),  # sent before the request, timed after it
              event(0, "u2", buy, 1_000), event(1, "u2", buy, 1_001),
              event(2, "u2", click, 5_000)]
    after = [event(3, "u1", click, 2_000), event(4, "u1", click, 2_001),
             event(3, "u2", buy, 2_000)]
    with EventProducer(kafka, client_id="test") as producer:
        for out in before:
            producer.send(out)
    send_forget(kafka, "u1")
    send_forget(kafka, "u2")
    with EventProducer(kafka, client_id="test") as producer:
        for out in after:
            producer.send(out)

    trainer = run_until_idle(kafka, _cfg(batch_max=1000))
    rows = latest_rows(kafka)
    u1, u2 = rows["user:u1"], rows["user:u2"]
    assert u1 is not None and u1.updates == 2 and set(u1.recent_items) == {"i3", "i4"}
    assert u2 is not None and u2.updates == 1 and set(u2.recent_items) == {"i3"}
    assert not read_topic(kafka.bootstrap_servers, kafka.topics.dlq)
    assert sorted(trainer.learner.user_ids()) == ["u1", "u2"]


def test_trainer_refuses_event_topics_with_different_partition_counts(
        kafka: KafkaConfig) -> None:
    # Co-partitioning (a user's clicks and purchases on the same partition
    # number, owned by one trainer) needs equal counts: fail before any poll.
    admin = admin_client(kafka)  # alive until the future resolves
    admin.create_partitions([NewPartitions(kafka.topics.purchases, 4)])[
        kafka.topics.purchases].result()
    wait_until(lambda: len(admin.list_topics(kafka.topics.purchases, timeout=5)
                           .topics[kafka.topics.purchases].partitions) == 4,
               what="the new partition in the metadata")
    with pytest.raises(TopicError, match=r"same partition count.*clicks has 3, "
                                         r"\S*purchases has 4 partitions"):
        make_trainer(kafka, _cfg(), LEARNER).run()


def test_trainer_stops_when_partitions_added_to_one_event_topic_break_co_partitioning(
        kafka: KafkaConfig) -> None:
    """Checked only at start before: the range assignor then split a user's clicks and
    purchases between two trainers, each publishing the user's row over the other's."""
    produce(kafka, list(generate(200, n_users=20, n_items=10, seed=21)))
    refresh = dataclasses.replace(kafka, client={**kafka.client,
                                                 "topic.metadata.refresh.interval.ms": "1000"})
    stop = threading.Event()
    trainer = make_trainer(refresh, _cfg(exit_when_idle=None), LEARNER, stop=stop)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            trainer.run()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            raised.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    inputs = [kafka.topics.clicks, kafka.topics.purchases]
    try:
        wait_until(lambda: committed_total(kafka, _cfg().group_id, inputs)
                   >= end_total(kafka, inputs), timeout=60, what="the input drained")
        admin = admin_client(kafka)
        admin.create_partitions([NewPartitions(kafka.topics.clicks, 4)])[
            kafka.topics.clicks].result()
        runner.join(60)
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], TopicError), raised
    assert "clicks has 4" in str(raised[0])


def test_release_times_reach_the_published_bias_and_survive_a_restore(
        kafka: KafkaConfig) -> None:
    day = 86_400_000
    events = [r.event for r in generate(300, n_users=20, n_items=12, seed=8) if r.event]
    # Even-numbered items say when they were released: 10 days before the
    # stream (inside the window) for i0-i4, long before it for the rest.
    t0 = min(e.ts for e in events)

    def released(item: str) -> int | None:
        n = int("".join(ch for ch in item if ch.isdigit()) or 1)
        return None if n % 2 else t0 - (10 * day if n < 5 else 3 * LEARNER.release_window_ms)

    events = [dataclasses.replace(e, item_released_at=released(e.item_id)) for e in events]
    produce(kafka, [to_record(e) for e in events])
    running = run_until_idle(kafka, _cfg())

    items = {k[5:]: r for k, r in latest_rows(kafka).items() if k.startswith("item:") and r}
    boosted = 0
    for item, row in items.items():
        at = released(item)
        assert row.state.get("released_at") == at, item
        recent = at is not None and at > t0 - LEARNER.release_window_ms
        assert row.bias == pytest.approx(row.state["logpop"] + (1.0 if recent else 0.0)), item
        boosted += recent
    assert boosted >= 2

    restored = make_trainer(kafka, _cfg(), LEARNER)
    restored._restore()
    ids = sorted(items)
    before = running.learner.rows(item_ids=ids, model_version="v", now_ms=0)
    after = restored.learner.rows(item_ids=ids, model_version="v", now_ms=0)
    for old, new in zip(before, after, strict=True):
        assert new == old and _state_bytes(new.state) == _state_bytes(old.state), old.key


def test_partitions_coming_back_keep_the_learner_unless_another_writer_moved_the_changelog(
        kafka: KafkaConfig, caplog: pytest.LogCaptureFixture) -> None:
    """A rebalance that hands a lone trainer its partitions back (here: a member of
    another topic joins and leaves its group) restored the whole changelog each
    time. The trainer knows its own writes (records in the partitions librdkafka's
    default partitioner gives their keys, plus a commit marker per partition and
    transaction), so it restores only when someone else wrote, or after other
    members held some input partitions (it then publishes only its own users, so
    its learner is not the changelog's). The first kept learner also shows the
    computed partitions are librdkafka's: one record off and the ends differ."""
    caplog.set_level(logging.INFO, logger="stream_app")
    cfg = _cfg(group_id=f"{kafka.topic_prefix}trainer", exit_when_idle=None)
    inputs = [kafka.topics.clicks, kafka.topics.purchases]
    first = list(generate(300, n_users=30, n_items=25, seed=11))
    second = list(generate(200, n_users=30, n_items=25, seed=12))
    third = list(generate(200, n_users=30, n_items=25, seed=13))
    trainer = make_trainer(kafka, cfg, LEARNER)
    runner = threading.Thread(target=trainer.run, daemon=True)
    restoring_ready: list[tuple[str, bool]] = []  # (reason, /readyz's flag) per restore
    rebuild = trainer._rebuild  # the restore's work, inside `_restore`'s not-ready flag

    def spy(reason: str, *, settle: bool) -> bool:
        restoring_ready.append((reason, trainer.ready))
        return rebuild(reason, settle=settle)

    trainer._rebuild = spy  # type: ignore[method-assign]

    def decisions() -> list[str]:
        """The trainer's choice on each assignment, in order (logged once it is made)."""
        out = []
        for r in caplog.records:
            if r.name == "stream_app.trainer.ownership" and "newly assigned" in r.getMessage():
                out.append("keep" if "keeping the learner" in r.getMessage() else "restore")
        return out

    def after(n: int, decision: str, what: str) -> None:
        """Wait for `decision` among the decisions after the first `n`, and its restore's
        end (`ready` is false from a restore's start to its end)."""
        wait_until(lambda: decision in decisions()[n:] and trainer.ready, timeout=60,
                   what=what)

    def drained() -> bool:
        return committed_total(kafka, cfg.group_id, inputs) >= end_total(kafka, inputs)

    produce(kafka, first)
    runner.start()
    member = {"bootstrap.servers": kafka.bootstrap_servers, "group.id": cfg.group_id,
              "partition.assignment.strategy": "range", "enable.auto.commit": False}
    other = Consumer(member)
    try:
        wait_until(drained, timeout=120, what="the first events committed")
        assert set(decisions()) == {"keep"}  # the start: restored just before, nothing since
        n = len(decisions())
        other.subscribe([kafka.topics.score_requests])  # same group, another topic
        wait_until(lambda: other.poll(0.1) is None and bool(other.assignment()), timeout=60,
                   what="the other member to join")
        after(n, "keep", "the rebalance to keep the learner")
        assert "restore" not in decisions()[n:]  # our own commits only

        # Someone else writes to the changelog: a copy of a user row as a new user.
        some = next(r for k, r in latest_rows(kafka).items()
                    if k.startswith("user:") and r is not None)
        copy = dataclasses.replace(some, id="foreign")
        foreign = Producer({"bootstrap.servers": kafka.bootstrap_servers})
        foreign.produce(kafka.topics.embeddings, key=copy.key.encode(),
                        value=encode_embedding(copy))
        assert foreign.flush(10) == 0
        users = trainer.learner.table_sizes()["users"]
        n = len(decisions())
        other.close()  # leaves: the trainer's partitions come back once more
        after(n, "restore", "the rebalance after the foreign write to restore")
        assert trainer.learner.table_sizes()["users"] == users + 1  # it read the foreign row

        produce(kafka, second)
        wait_until(drained, timeout=120, what="the second events committed")

        # A member of the input topics takes some partitions (and commits nothing):
        # the trainer publishes only its own users meanwhile, then gets all back.
        taker = Consumer(member)
        try:
            n = len(decisions())
            taker.subscribe(inputs)
            wait_until(lambda: taker.poll(0.1) is None and bool(taker.assignment()),
                       timeout=60, what="the taker to join")
            after(n, "keep", "the taker's rebalance to keep the learner")
            assert "restore" not in decisions()[n:]  # nobody wrote since
            before = committed_total(kafka, cfg.group_id, inputs)
            produce(kafka, third)
            wait_until(lambda: committed_total(kafka, cfg.group_id, inputs) > before,
                       timeout=120, what="a commit in partial scope")
            n = len(decisions())
        finally:
            taker.close()
        after(n, "restore", "the partial scope's end to restore")
        wait_until(drained, timeout=120, what="the third events committed")
    finally:
        trainer.stop.set()
        runner.join(timeout=60)
    assert not runner.is_alive()
    user_rows = {k: r for k, r in latest_rows(kafka).items()
                 if k.startswith("user:") and k != "user:foreign" and r is not None}
    valid = [r.event for r in first + second + third if r.event is not None]
    assert _updates(user_rows) == Counter(e.user_id for e in valid)
    rebalance = trainer.metrics.restores.labels(reason="rebalance")._value.get()  # noqa: SLF001
    assert rebalance == decisions().count("restore")
    # /readyz answers "restoring" through each on-assign restore (the flag it reads).
    flags = [ready for reason, ready in restoring_ready if reason == "rebalance"]
    assert len(flags) == rebalance >= 2 and not any(flags)
    assert trainer.metrics.restores.labels(reason="abort")._value.get() == 0  # noqa: SLF001
