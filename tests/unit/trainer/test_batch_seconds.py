"""`stream_app_batch_seconds` times a batch from its poll to its commit or abort."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from stream_app.codec import encode_event
from stream_app.config import KafkaConfig
from stream_app.core import LearnerConfig
from stream_app.events import Event, EventKind
from stream_app.kafka.records import RawRecord
from stream_app.kafka.transaction import TxnOutcome
from stream_app.trainer import TrainerConfig, loop, make_trainer

TS = 1_700_000_000_000


def test_an_aborted_batch_is_timed_to_its_abort_not_through_its_restore(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The back-off and the restore from the changelog after an abort (seconds to minutes,
    `restore_seconds`) went into the batch's time: one abort put them in the panel's p99."""
    trainer: Any = make_trainer(KafkaConfig(bootstrap_servers="127.0.0.1:1"),
                                TrainerConfig(metrics_port=0), LearnerConfig(dim=4))
    clock = [1000.0]  # the loop's clock, moved by hand: no timing in the test
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])

    def takes(seconds: float) -> Any:
        return lambda *_a, **_k: clock.__setitem__(0, clock[0] + seconds)

    trainer._back_off_after_abort = takes(30.0)
    trainer._restore = takes(100.0)

    def commit(*_a: object, **_k: object) -> TxnOutcome:
        clock[0] += 2.0
        return TxnOutcome.ABORTED

    publisher = SimpleNamespace(commit=commit)
    event = Event(event_id="e1", user_id="u1", item_id="i1", ts=TS, kind=EventKind.CLICK)
    batch = [RawRecord(trainer.topics.clicks, 0, 0, b"u1", encode_event(event), TS)]
    trainer.process(batch, cast(Any, None), publisher)
    sample = trainer.metrics.registry.get_sample_value
    assert sample("stream_app_transaction_aborts_total") == 1
    assert sample("stream_app_batch_seconds_sum") == pytest.approx(2.0)
