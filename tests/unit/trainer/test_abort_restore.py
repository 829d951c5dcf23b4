"""After an aborted transaction the trainer goes back to its last commit exactly.

Stand-ins: a publisher that commits to an in-memory changelog or aborts when told,
and the restore reading that changelog. What is tested is the trainer's abort
path (`Trainer.process` -> `_restore("abort")` -> the state kept at the commit);
the transaction against a real broker is tests/integration/test_transaction.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import stream_app.trainer.ownership
from stream_app.codec import encode_event
from stream_app.config import KafkaConfig
from stream_app.core import Learner, LearnerConfig
from stream_app.events import Event, EventKind
from stream_app.kafka.records import RawRecord
from stream_app.kafka.transaction import TxnOutcome
from stream_app.trainer import BatchResult, TrainerConfig, make_trainer
from stream_app.trainer.batch import CONTROL_HEADER
from stream_app.trainer.restore import RestoreStats, apply_changelog
from tests.unit.core.streams import T0, small_config

Log = list[tuple[bytes, bytes | None]]


class _Publisher:
    """Commits each transaction's embeddings records to `log`, or aborts it when the
    next of `aborts` says so."""

    spot = None

    def __init__(self, topic: str, aborts: Iterator[bool]) -> None:
        self.topic, self.aborts, self.log = topic, aborts, []  # type: Log

    def commit(self, consumer: object, records: list[Any], offsets: object, starts: object,
               *, spot_topic: str | None = None) -> TxnOutcome:
        if next(self.aborts):
            return TxnOutcome.ABORTED
        self.log += [(r.key, r.value) for r in records if r.topic == self.topic]
        return TxnOutcome.COMMITTED


def _trainer(monkeypatch: pytest.MonkeyPatch, config: LearnerConfig,
             aborts: list[bool], chunk: int = 1 << 30) -> tuple[Any, _Publisher]:
    """`chunk`: records the restore reads at a time (a consume() of the changelog)."""
    trainer: Any = make_trainer(KafkaConfig(bootstrap_servers="127.0.0.1:1"),
                                TrainerConfig(metrics_port=0), config)
    publisher = _Publisher(trainer.topics.embeddings, iter(aborts + [False] * 10))

    def restore(learner: Learner, *_a: object, instance_id: str | None = None,
                **_k: object) -> RestoreStats:
        log = list(publisher.log)
        for start in range(0, len(log), chunk):
            apply_changelog(learner, log[start:start + chunk], instance_id=instance_id)
        learner.finish_restore()
        return RestoreStats(0, 0, 0, 0.0, {0: len(publisher.log)})

    monkeypatch.setattr(stream_app.trainer.ownership, "restore", restore)
    monkeypatch.setattr(trainer, "_back_off_after_abort", lambda: None)
    trainer._restore()  # noqa: SLF001 (the start's, from the empty changelog)
    return trainer, publisher


def _click(topic: str, offset: int, user: str, event_id: str, item: str = "i1") -> RawRecord:
    event = Event(event_id=event_id, user_id=user, item_id=item, ts=T0 + offset,
                  kind=EventKind.CLICK)
    return RawRecord(topic, 0, offset, user.encode(), encode_event(event), T0)


def _committed(trainer: Any, publisher: _Publisher, batch: list[RawRecord]) -> BatchResult:
    """Process `batch` until a transaction of it commits (an abort re-reads it)."""
    while (result := trainer.process(batch, None, publisher)).outcome is not \
            TxnOutcome.COMMITTED:
        pass
    return result


def _forgotten_then_back(monkeypatch: pytest.MonkeyPatch, *,
                         second_aborts: bool) -> tuple[Any, _Publisher]:
    """User u admitted (2 events of `admission_threshold` 2), forgotten, then back with one
    event, in one committed transaction; the next transaction aborts once if told."""
    trainer, publisher = _trainer(monkeypatch, small_config(admission_threshold=2),
                                  aborts=[False, second_aborts])
    clicks = trainer.topics.clicks
    forget = RawRecord(clicks, 0, 2, b"u", b'{"type":"forget"}', T0,
                       ((CONTROL_HEADER, b"forget"),))
    _committed(trainer, publisher, [_click(clicks, 0, "u", "e0"), _click(clicks, 1, "u", "e1"),
                                    forget, _click(clicks, 3, "u", "e3")])
    assert publisher.log.count((b"user:u", None)) == 1
    return trainer, publisher


@pytest.mark.parametrize("abort", [False, True])
def test_an_abort_keeps_an_admission_count_committed_after_the_users_forget(
        monkeypatch: pytest.MonkeyPatch, abort: bool) -> None:
    """The restore read back the trainer's own tombstone of u and dropped u's admission
    count, committed after it: u's event at offset 3 was committed without effect."""
    trainer, publisher = _forgotten_then_back(monkeypatch, second_aborts=abort)
    _committed(trainer, publisher, [_click(trainer.topics.clicks, 4, "u", "e4")])
    assert "u" in trainer.learner.user_ids()


@pytest.mark.parametrize("abort", [False, True])
def test_an_abort_does_not_apply_a_resent_event_of_an_evicted_user_twice(
        monkeypatch: pytest.MonkeyPatch, abort: bool) -> None:
    trainer, publisher = _trainer(monkeypatch, small_config(max_users=1),
                                  aborts=[False, False, abort])
    clicks = trainer.topics.clicks
    _committed(trainer, publisher, [_click(clicks, 0, "u", "e1")])
    _committed(trainer, publisher, [_click(clicks, 1, "v", "e2")])  # evicts u at the cap
    assert (b"user:u", None) in publisher.log
    assert _committed(trainer, publisher, [_click(clicks, 2, "u", "e1")]).applied == 0


def test_after_a_reassignment_the_trainers_old_tombstones_count_as_anyones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another trainer may have owned u's partition in between and erased u again."""
    trainer, publisher = _forgotten_then_back(monkeypatch, second_aborts=True)
    trainer._on_assign(None, [])  # noqa: SLF001 (a rebalance; this trainer gets no partition)
    _committed(trainer, publisher, [_click(trainer.topics.clicks, 4, "u", "e4")])
    assert "u" not in trainer.learner.user_ids()  # its count of 1 dropped: one event of 2


def test_an_abort_in_partial_scope_keeps_the_replay_buffer_of_the_last_commit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The abort path emptied the replay buffer it had just put back, so what the model
    learned next depended on how many transactions had aborted."""
    trainer, publisher = _trainer(monkeypatch, small_config(), aborts=[False, True])
    trainer._scope(False)  # noqa: SLF001 (other trainers own some input partitions)
    clicks = trainer.topics.clicks
    _committed(trainer, publisher, [_click(clicks, n, f"u{n % 3}", f"e{n}", f"i{n % 4}")
                                    for n in range(12)])
    kept = trainer.learner.volatile_state()["replay"]["size"]
    assert kept > 0
    trainer.process([_click(clicks, 12, "u0", "e12")], None, publisher)  # aborts
    assert trainer.learner.volatile_state()["replay"]["size"] == kept


def test_an_abort_just_after_the_scope_narrowed_does_not_bring_back_others_events(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The state kept at the last commit, in full scope, held every user's replayed
    events; the first abort after a partial assignment put them back (review)."""
    trainer, publisher = _trainer(monkeypatch, small_config(), aborts=[False, True])
    clicks = trainer.topics.clicks
    _committed(trainer, publisher, [_click(clicks, n, f"u{n % 3}", f"e{n}", f"i{n % 4}")
                                    for n in range(12)])
    assert trainer.learner.volatile_state()["replay"]["size"] > 0
    trainer._scope(False)  # noqa: SLF001 (a rebalance: other trainers own some partitions)
    trainer.process([_click(clicks, 12, "u0", "e12")], None, publisher)  # aborts
    assert trainer.learner.volatile_state()["replay"]["size"] == 0


@pytest.mark.parametrize("chunk", [1 << 30, 1])
def test_an_abort_keeps_the_event_ids_of_a_user_back_after_its_own_tombstone(
        monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Read in another chunk than the row after it, the tombstone left u erased for the
    restore, which dropped u's event ids kept at the commit: a re-sent copy of u's
    committed event was applied twice after an abort (exactly-once review)."""
    trainer, publisher = _trainer(monkeypatch, small_config(), aborts=[False] * 3 + [True],
                                  chunk=chunk)
    clicks = trainer.topics.clicks
    forget = RawRecord(clicks, 0, 1, b"u", b'{"type":"forget"}', T0,
                       ((CONTROL_HEADER, b"forget"),))
    _committed(trainer, publisher, [_click(clicks, 0, "u", "e0")])
    _committed(trainer, publisher, [forget])
    _committed(trainer, publisher, [_click(clicks, 2, "u", "e2", "i2")])  # u is back
    again = [_click(clicks, 3, "v", "e3"), _click(clicks, 4, "u", "e2", "i2")]  # aborts once
    assert _committed(trainer, publisher, again).applied == 1  # e3; e2 is a copy


def test_the_trainer_is_not_ready_while_an_abort_restores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """/readyz and stream_app_trainer_ready said ready through an abort's restore, as long
    as a start's, and TrainerNotReady could not cover it (observability review)."""
    trainer, publisher = _trainer(monkeypatch, small_config(), aborts=[True])
    seen: list[bool] = []
    inner = stream_app.trainer.ownership.restore

    def watching(*args: Any, **kwargs: Any) -> RestoreStats:
        seen.append(trainer.ready)
        return inner(*args, **kwargs)

    monkeypatch.setattr(stream_app.trainer.ownership, "restore", watching)
    trainer.ready = True  # as after the start's restore
    result = trainer.process([_click(trainer.topics.clicks, 0, "u", "e0")], None, publisher)
    assert result.outcome is TxnOutcome.ABORTED
    assert seen == [False] and trainer.ready
