"""A step longer than max.poll.interval.ms: the group drops the trainer mid-batch.

librdkafka counts the time between two polls; a micro-batch whose learning and
publishing take longer (a huge `batch_max` on a slow CPU, a stalled GPU) makes
the member leave the group before its transaction commits (its offsets are
refused: unknown member). The batch must apply once: not lost with the dropped
member, not doubled by its re-read; and the log must say what to change, since
a batch that always takes that long is retried for ever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable

import pytest

from stream_app.config import KafkaConfig
from stream_app.core import Learner
from stream_app.sources.generate import generate
from stream_app.trainer import TrainerConfig, make_trainer
from stream_app.trainer.loop import Trainer
from stream_app.watchdog import NO_WATCHDOG, Watchdog
from tests.reliability.harness import LEARNER, audit, expected_user_updates, produce

POLL_INTERVAL_MS = 6_000  # the broker's smallest session timeout; max.poll.interval may not be less
DEADLINE_S = 90.0


def run_slowed(make_kafka: object, monkeypatch: pytest.MonkeyPatch, *, seed: int, events: int,
               exit_when_idle: float,
               before_batch_s: Callable[[list[int]], float] = lambda _sizes: 0.0,
               per_learned_event_s: float = 0.0, step_max: int = 2_000,
               watchdog_s: float | None = None) -> list[int]:
    """Train on `events` generated events under a 6 s poll interval, sleeping
    `before_batch_s(sizes so far)` before each batch and `per_learned_event_s` per event
    in each learning step; check every user row and return the batch sizes. Stopped at
    DEADLINE_S: a trainer that retries the same batch for ever fails here, as it does
    when the stall watchdog (limit `watchdog_s`) fires."""
    kafka: KafkaConfig = make_kafka()  # type: ignore[operator]
    stream = list(generate(events, n_users=100, n_items=80, seed=seed))
    produce(kafka, stream)
    kafka = dataclasses.replace(kafka, client={"max.poll.interval.ms": str(POLL_INTERVAL_MS),
                                               "session.timeout.ms": str(POLL_INTERVAL_MS)})
    sizes: list[int] = []
    process, learn = Trainer.process, Learner.learn

    def slowed(self: Trainer, batch, consumer, publisher):  # type: ignore[no-untyped-def]
        time.sleep(before_batch_s(sizes))
        sizes.append(len(batch))
        return process(self, batch, consumer, publisher)

    def slow_learn(self: Learner, events, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(per_learned_event_s * len(events))
        return learn(self, events, *args, **kwargs)

    monkeypatch.setattr(Trainer, "process", slowed)
    monkeypatch.setattr(Learner, "learn", slow_learn)
    cfg = TrainerConfig(metrics_port=0, batch_max=500, step_max=step_max, batch_wait_ms=300,
                        exit_when_idle=exit_when_idle)
    stalls: list[str] = []
    dog = None if watchdog_s is None else Watchdog(
        watchdog_s, component="trainer", on_stall=lambda: stalls.append("stalled"),
        dump_stacks=False)
    trainer = make_trainer(kafka, cfg, LEARNER, watchdog=dog or NO_WATCHDOG)
    deadline = threading.Timer(DEADLINE_S, trainer.stop.set)
    deadline.start()
    try:
        with dog or contextlib.nullcontext():
            assert trainer.run() == 0
    finally:
        deadline.cancel()
    assert not trainer.stop.is_set(), f"still retrying at the deadline; batch sizes {sizes}"
    assert not stalls, "the watchdog took a long batch for a hung trainer"
    valid = [r.event for r in stream if r.event is not None]
    assert audit(kafka).users == expected_user_updates(valid)
    return sizes


def test_a_step_past_max_poll_interval_applies_its_batch_once(
        make_kafka: object, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    sizes = run_slowed(make_kafka, monkeypatch, seed=11, events=1_500, exit_when_idle=8.0,
                       before_batch_s=lambda before: 0.0 if before else 9.0)
    # The operator is told what happened and what the trainer does about it.
    said = caplog.text
    assert (f"over half of max.poll.interval.ms (6 s): taking at most {sizes[0] // 2} records"
            in said)
    assert "_MAX_POLL_EXCEEDED" in said and "raise -X max.poll.interval.ms" in said


def test_batches_that_always_outlast_the_interval_shrink_until_they_commit(
        make_kafka: object, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Every event costs 20 ms to learn, so a full batch (500: 10 s) never fits the
    interval: before the trainer shrank its polls it aborted and re-read that batch until
    stopped. The watchdog's 4 s limit is under a batch but over a 50-event step: a
    long batch is progress, as long as its steps beat."""
    sizes = run_slowed(make_kafka, monkeypatch, seed=12, events=1_000, exit_when_idle=5.0,
                       per_learned_event_s=0.02, step_max=50, watchdog_s=4.0)
    assert max(sizes[1:]) <= sizes[0] // 2, sizes
    assert "records a poll until batches are faster" in caplog.text
