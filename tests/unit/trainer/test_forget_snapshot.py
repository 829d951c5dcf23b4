"""A committed forget request makes the local snapshot due at once; when none can be
written (other trainers share the input, the changelog holds another writer's rows), the
old file is deleted: it holds the erased user's events, and kept until the next write it
could sit on disk for as long as the partitions stay shared (helper review of the forget
path). Stand-ins for the publisher and the restore: `test_abort_restore`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stream_app.codec import decode_meta, is_meta_key
from stream_app.kafka.records import RawRecord
from stream_app.trainer.control import CONTROL_HEADER
from stream_app.trainer.snapshot import SnapshotTag
from tests.unit.core.streams import T0, small_config
from tests.unit.trainer.test_abort_restore import _click, _committed, _trainer


def _with_old_snapshot(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Any, Any]:
    trainer, publisher = _trainer(monkeypatch, small_config(), aborts=[])
    from stream_app.trainer.snapshot import Snapshots

    trainer._snapshots = Snapshots(trainer.kafka, folder=str(tmp_path),  # noqa: SLF001
                                   transactional_id="t", max_age_s=3600.0)
    trainer._snapshots.path.write_bytes(b"a snapshot holding u's events")  # noqa: SLF001
    trainer._own_users = set()  # noqa: SLF001 (partial scope: no snapshot can be written)
    return trainer, publisher


@pytest.mark.parametrize("forgets", [False, True])
def test_a_forget_deletes_a_snapshot_that_cannot_be_written_again(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, forgets: bool) -> None:
    trainer, publisher = _with_old_snapshot(monkeypatch, tmp_path)
    clicks = trainer.topics.clicks
    batch = [_click(clicks, 0, "u", "e0")]
    if forgets:
        batch.append(RawRecord(clicks, 0, 1, b"u", b'{"type":"forget"}', T0,
                               ((CONTROL_HEADER, b"forget"),)))
    _committed(trainer, publisher, batch)
    trainer._snapshot(consumer=None)  # noqa: SLF001 (the loop's call after the batch)
    assert trainer._snapshots.path.exists() is not forgets  # noqa: SLF001


def test_a_restore_that_distrusts_users_deletes_a_snapshot_that_cannot_be_written_again(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The snapshot file may hold the events of a user another trainer erased and saw
    again (no tombstone): a later restart that read the other trainer's row only in a
    chunk with this trainer's newer one, or after compaction, would load them back
    (helper review of the distrust change)."""
    trainer, publisher = _with_old_snapshot(monkeypatch, tmp_path)
    clicks = trainer.topics.clicks
    _committed(trainer, publisher, [_click(clicks, 0, "u", "e0")])
    trainer._snapshot(consumer=None)  # noqa: SLF001
    assert trainer._snapshots.path.exists()  # noqa: SLF001 (no erasure yet: kept)
    key, value = next((k, v) for k, v in publisher.log if k == b"user:u")
    assert value is not None
    publisher.log.append((key, value.replace(b'"model_version":"trainer-0-',
                                             b'"model_version":"trainer-9-')))
    trainer._restore("rebalance")  # noqa: SLF001
    trainer._snapshot(consumer=None)  # noqa: SLF001
    assert not trainer._snapshots.path.exists()  # noqa: SLF001


def _half(topic: str, offset: int) -> RawRecord:
    value = b'{"type":"forget","user_id":"u","request_id":"' + b"a" * 32 + b'"}'
    return RawRecord(topic, 0, offset, b"u", value, T0, ((CONTROL_HEADER, b"forget"),))


def test_the_second_half_of_a_forget_in_a_later_batch_deletes_the_snapshot_too(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """It erases what the user sent on its topic: counted once per request (the first
    half), it left a snapshot written in between holding those events."""
    trainer, publisher = _with_old_snapshot(monkeypatch, tmp_path)
    clicks, purchases = trainer.topics.clicks, trainer.topics.purchases
    _committed(trainer, publisher, [_click(clicks, 0, "u", "e0"), _half(clicks, 1)])
    trainer._snapshot(consumer=None)  # noqa: SLF001
    assert not trainer._snapshots.path.exists()  # noqa: SLF001
    trainer._snapshots.path.write_bytes(b"written between the halves")  # noqa: SLF001
    _committed(trainer, publisher, [_half(purchases, 0)])
    trainer._snapshot(consumer=None)  # noqa: SLF001
    assert not trainer._snapshots.path.exists()  # noqa: SLF001


def test_a_snapshot_that_fails_to_be_written_after_a_forget_is_deleted_at_the_stop(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A clean stop wrote it synchronously; on a full disk the old file stayed, holding the
    user, and the restarted trainer does not know of the erasure."""
    import stream_app.trainer.snapshot

    def full_disk(*_a: object) -> None:
        raise OSError(28, "No space left on device")

    trainer, publisher = _with_old_snapshot(monkeypatch, tmp_path)
    trainer._own_users = None  # noqa: SLF001 (whole scope: a snapshot may be written)
    monkeypatch.setattr(trainer, "_snapshot_ends", lambda *_a, **_k: {0: len(publisher.log)})
    monkeypatch.setattr(stream_app.trainer.snapshot, "write_state", full_disk)
    monkeypatch.setattr(trainer._snapshots, "changelog_tag",  # noqa: SLF001
                        lambda ends: stream_app.trainer.snapshot.SnapshotTag(
                            topic="t", topic_id="id", ends=ends, written_ms=0))
    clicks = trainer.topics.clicks
    _committed(trainer, publisher, [_click(clicks, 0, "u", "e0"), _half(clicks, 1)])
    trainer._snapshot(consumer=None, stopping=True)  # noqa: SLF001
    assert not trainer._snapshots.path.exists()  # noqa: SLF001


def test_a_restart_from_a_snapshot_older_than_a_forget_deletes_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A trainer stopped (killed, OOM) after a forget committed and before its snapshot was
    written again: restarted from that file plus the changelog after it, it erased the
    user from the learner but kept the file, which still holds the user's events, until
    some later write (never, on an idle trainer). Helper review of the forget path."""
    trainer, publisher = _with_old_snapshot(monkeypatch, tmp_path)
    clicks = trainer.topics.clicks
    _committed(trainer, publisher, [_click(clicks, 0, "u", "e0")])
    in_file = decode_meta(next(v for k, v in reversed(publisher.log) if is_meta_key(k)))
    _committed(trainer, publisher, [_half(clicks, 1)])
    trainer._erasures = trainer._snapshots.erasures = 0  # noqa: SLF001 (a new process)
    tag = SnapshotTag(topic="t", topic_id="id", ends={0: 0}, written_ms=0)
    monkeypatch.setattr(trainer._snapshots, "load_into",  # noqa: SLF001
                        lambda learner: (learner.apply_global_state(in_file), tag)[1])
    trainer._restore()  # noqa: SLF001
    assert trainer.learner.forget_requests == in_file["forget_requests"] + 1
    trainer._snapshot(consumer=None)  # noqa: SLF001
    assert not trainer._snapshots.path.exists()  # noqa: SLF001
