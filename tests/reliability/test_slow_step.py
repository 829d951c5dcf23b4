"""A step longer than max.poll.interval.ms: the group drops the trainer mid-batch.

librdkafka counts the time between two polls; a micro-batch whose learning and
publishing take longer (a huge `batch_max` on a slow CPU, a stalled GPU) makes
the member leave the group before its transaction commits (its offsets are
refused: unknown member). The batch must apply once: not lost with the dropped
member, not doubled by its re-read; and the log must say what to change, since
a batch that always takes that long is retried for ever.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from stream_app.config import KafkaConfig
from stream_app.sources.generate import generate
from stream_app.trainer import TrainerConfig, make_trainer
from stream_app.trainer.loop import Trainer
from tests.reliability.harness import LEARNER, audit, expected_user_updates, produce

SLOW_S = 9.0
POLL_INTERVAL_MS = 6_000  # the broker's smallest session timeout; max.poll.interval may not be less


def test_a_step_past_max_poll_interval_applies_its_batch_once(
        make_kafka: object, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    kafka: KafkaConfig = make_kafka()  # type: ignore[operator]
    stream = list(generate(1_500, n_users=100, n_items=80, seed=11))
    produce(kafka, stream)
    kafka = dataclasses.replace(kafka, client={"max.poll.interval.ms": str(POLL_INTERVAL_MS),
                                               "session.timeout.ms": str(POLL_INTERVAL_MS)})
    slowed: list[int] = []
    process = Trainer.process

    def slow_first(self: Trainer, batch, consumer, publisher):  # type: ignore[no-untyped-def]
        if not slowed:
            slowed.append(len(batch))
            time.sleep(SLOW_S)
        return process(self, batch, consumer, publisher)

    monkeypatch.setattr(Trainer, "process", slow_first)
    cfg = TrainerConfig(metrics_port=0, batch_max=500, batch_wait_ms=100, exit_when_idle=8.0)
    assert make_trainer(kafka, cfg, LEARNER).run() == 0
    assert slowed, "no batch was processed"
    valid = [r.event for r in stream if r.event is not None]
    assert audit(kafka).users == expected_user_updates(valid)
    # The operator is told before the drop (at half the interval) and at it, with the fix.
    said = caplog.text
    assert "over half of max.poll.interval.ms (6 s)" in said
    assert "_MAX_POLL_EXCEEDED" in said and "raise -X max.poll.interval.ms" in said
