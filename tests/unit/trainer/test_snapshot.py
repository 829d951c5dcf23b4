"""A snapshot plus the changelog after its tag restores the model the whole changelog does.

No broker: the changelog is the list of records the trainer's own
`output_records` makes per batch, applied with the restore's `apply_changelog`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stream_app.codec import encode_rows
from stream_app.config import ConfigError, KafkaConfig, TopicNames
from stream_app.core import Learner, LearnerConfig, Outcome
from stream_app.events import EmbeddingRow, Event, EventKind
from stream_app.kafka.exceptions import ChangelogError, KafkaEdgeError
from stream_app.trainer.batch import output_records
from stream_app.trainer.restore import apply_changelog
from stream_app.trainer.snapshot import (
    Snapshots,
    SnapshotTag,
    read_snapshot,
    why_unusable,
    write_state,
)
from tests.device import DEVICE
from tests.unit.core.streams import T0, ev, random_events, small_config

TOPICS = TopicNames(prefix="t.")
CONFIG = small_config(idle_ttl_ms=40_000)  # items idle 40 s of event time are evicted
Log = list[tuple[bytes | None, bytes | None]]


def _publish(learner: Learner, events: list[Event], forget: tuple[str, ...] = (),
             version: str = "v") -> Log:
    """What one trainer transaction appends to the changelog (rows, tombstones, meta), as
    trainer `version`."""
    st = learner.learn(events)
    gone = {f"user:{u}" for u in st.evicted_user_ids} | {f"item:{i}" for i in st.evicted_item_ids}
    gone |= {f"user:{u}" for u in forget if learner.forget_user(u)}
    users = sorted(set(st.changed_user_ids) - {g[5:] for g in gone if g.startswith("user:")})
    items = sorted(set(st.changed_item_ids) - {g[5:] for g in gone if g.startswith("item:")})
    rows = learner.row_blocks(user_ids=users, item_ids=items, model_version=version, now_ms=0)
    meta = {**learner.global_state(), "model_version": version, "updated_at": 0}
    return [(r.key, r.value) for r in output_records(TOPICS, rows, sorted(gone), meta, [])]


def _all_rows(learner: Learner) -> list[EmbeddingRow]:
    return learner.rows(user_ids=sorted(learner.user_ids()), item_ids=sorted(learner.item_ids()),
                        model_version="v", now_ms=0)


def _same(a: list[EmbeddingRow], b: list[EmbeddingRow]) -> None:
    assert [r.key for r in a] == [r.key for r in b]
    for x, y in zip(a, b, strict=True):
        assert x == y, x.key
        assert x.vector.tobytes() == y.vector.tobytes(), x.key
        assert x.state["opt"].keys() == y.state["opt"].keys(), x.key
        for k, v in x.state["opt"].items():
            assert np.asarray(v).tobytes() == np.asarray(y.state["opt"][k]).tobytes(), x.key


def _run(tmp_path: Path) -> tuple[Learner, Log, int, Path]:
    """Train in 6 batches; snapshot after batch 2. Returns (learner, changelog, tag, file)."""
    live = Learner(CONFIG, device=DEVICE)
    log: Log = []
    path = tmp_path / "t.snapshot"
    for b in range(6):
        events = random_events(100, users=15, items=40 if b < 2 else 8, seed=b, start=100 * b)
        log += _publish(live, events, forget=("u3",) if b == 4 else ())
        if b == 1:
            tag = SnapshotTag(topic="t.embeddings", topic_id="id", ends={0: len(log)},
                              written_ms=0)
            write_state(path, live.state_dict(), tag)
    return live, log, tag.ends[0], path


def test_snapshot_plus_tail_equals_the_whole_changelog_and_the_live_model(
        tmp_path: Path) -> None:
    live, log, at, path = _run(tmp_path)
    tail = log[at:]
    assert any(k and k.startswith(b"item:") and v is None for k, v in tail), \
        "the tail should evict items the snapshot still holds"
    assert (b"user:u3", None) in tail

    found = read_snapshot(path)
    assert found is not None
    from_snapshot = Learner(CONFIG, device=DEVICE)
    from_snapshot.load_state_dict(found[1])
    apply_changelog(from_snapshot, tail)
    whole = Learner(CONFIG, device=DEVICE)
    apply_changelog(whole, log)

    _same(_all_rows(from_snapshot), _all_rows(live))
    _same(_all_rows(whole), _all_rows(live))
    assert from_snapshot.global_state() == live.global_state() == whole.global_state()


def test_only_the_snapshot_brings_back_the_dedup_window(tmp_path: Path) -> None:
    _, log, at, path = _run(tmp_path)
    replayed = random_events(5, users=15, items=40, seed=0, start=0)  # ids from batch 0
    found = read_snapshot(path)
    assert found is not None
    from_snapshot = Learner(CONFIG, device=DEVICE)
    from_snapshot.load_state_dict(found[1])
    apply_changelog(from_snapshot, log[at:])
    whole = Learner(CONFIG, device=DEVICE)
    apply_changelog(whole, log)
    assert from_snapshot.learn(replayed).n_applied == 0
    assert whole.learn(replayed).n_applied == 5  # the compromise a snapshot removes
    reused = [dataclasses.replace(e, item_id=e.item_id + "x") for e in replayed]
    assert set(from_snapshot.learn(reused).outcomes) == {Outcome.ID_REUSED}  # content kept too


def _tag(**kw: object) -> SnapshotTag:
    base: dict[str, object] = {"topic": "t.embeddings", "topic_id": "A", "ends": {0: 5, 1: 7},
                               "written_ms": 1_000}
    base.update(kw)
    return SnapshotTag(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("changed", "expected"), [
    ({}, None),
    ({"topic_id": "B"}, "another topic"),
    ({"topic": "u.embeddings"}, "another topic"),
    ({"ends": {0: 4, 1: 7}}, "do not fit"),
    ({"ends": {0: 5}}, "do not fit"),
    ({"written_ms": 1_000 + 3_600_001}, "h old"),
])
def test_a_snapshot_that_may_not_match_the_changelog_is_refused_with_a_reason(
        changed: dict[str, object], expected: str | None) -> None:
    learner = Learner(CONFIG, device=DEVICE)
    now = dataclasses.replace(_tag(ends={0: 9, 1: 7}, written_ms=2_000), **changed)
    reason = why_unusable(_tag(), learner.state_dict(), now=now,
                          config=dataclasses.asdict(learner.config), max_age_ms=3_600_000)
    assert reason is None if expected is None else expected in (reason or "")


def test_another_learner_config_or_a_torn_file_is_refused(tmp_path: Path) -> None:
    learner = Learner(CONFIG, device=DEVICE)
    other = Learner(small_config(dim=4), device=DEVICE)
    reason = why_unusable(_tag(), other.state_dict(), now=_tag(),
                          config=dataclasses.asdict(learner.config), max_age_ms=1)
    assert reason == "it was written with another learner configuration"
    path = tmp_path / "x.snapshot"
    write_state(path, learner.state_dict(), _tag())
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="unreadable"):
        read_snapshot(path)
    assert read_snapshot(tmp_path / "missing.snapshot") is None


def test_a_snapshot_folder_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="snapshot_dir .* cannot be created"):
        Snapshots(KafkaConfig(bootstrap_servers="127.0.0.1:9092"),
                  folder=str(tmp_path / "file" / "sub"), transactional_id="t", max_age_s=1)


class _FixedTag(Snapshots):
    """The changelog's tag without a broker (the integration test covers the real one)."""

    def changelog_tag(self, ends: dict[int, int] | None = None) -> SnapshotTag:
        return _tag() if ends is None else _tag(ends=ends)


def test_a_background_write_holds_the_state_taken_when_it_was_asked_for(tmp_path: Path) -> None:
    written: list[bool] = []
    store = _FixedTag(KafkaConfig(bootstrap_servers="127.0.0.1:9092"), folder=str(tmp_path),
                      transactional_id="t", max_age_s=60, on_written=lambda: written.append(True))
    learner = Learner(CONFIG, device=DEVICE)
    learner.learn(random_events(50, seed=1))
    before = _all_rows(learner)
    store.write(learner, ends={0: 3, 1: 4}, wait=False)  # the ends the trainer proved
    learner.learn(random_events(50, seed=2, start=50))  # the loop goes on meanwhile
    assert store._writer is not None
    store._writer.join()
    found = read_snapshot(store.path)
    assert found is not None and found[0] == _tag(ends={0: 3, 1: 4})
    first = Learner(CONFIG, device=DEVICE)
    first.load_state_dict(found[1])
    _same(_all_rows(first), before)

    store.write(learner, ends=_tag().ends, wait=True)
    found = read_snapshot(store.path)
    assert found is not None
    second = Learner(CONFIG, device=DEVICE)
    second.load_state_dict(found[1])
    _same(_all_rows(second), _all_rows(learner))
    assert written == [True, True]


def test_a_background_write_that_fails_says_so_until_one_succeeds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write() returns once the thread starts; a write that then failed (disk full) left
    the idle trainer thinking its last batches were in a snapshot, so it never tried
    again. `write_failed` makes it due again (ownership._snapshot)."""
    import stream_app.trainer.snapshot as snapshot_module

    store = _FixedTag(KafkaConfig(bootstrap_servers="127.0.0.1:9092"), folder=str(tmp_path),
                      transactional_id="t", max_age_s=60)
    learner = Learner(CONFIG, device=DEVICE)

    def disk_full(*_a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshot_module, "write_state", disk_full)
    assert store.write(learner, ends=_tag().ends, wait=False)
    assert store._writer is not None
    store._writer.join()
    assert store.write_failed and not store.path.exists()
    monkeypatch.undo()
    assert store.write(learner, ends=_tag().ends, wait=True)
    assert not store.write_failed and store.path.exists()


def test_a_write_torch_fails_is_logged_and_leaves_no_partial_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save reports a full disk as RuntimeError ("[enforce fail at
    inline_container.cc] ... file write failed"), not OSError: the background writer died
    unlogged with write_failed unset and the half-written .tmp left on disk, and the
    write at a clean stop raised out of the trainer (exit 1)."""
    import stream_app.trainer.snapshot as snapshot_module

    def full_disk(_obj: object, f: Any) -> None:
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:671] . file write failed")

    store = _FixedTag(KafkaConfig(bootstrap_servers="127.0.0.1:9092"), folder=str(tmp_path),
                      transactional_id="t", max_age_s=60)
    learner = Learner(CONFIG, device=DEVICE)
    monkeypatch.setattr(snapshot_module.torch, "save", full_disk)
    assert store.write(learner, ends=_tag().ends, wait=False)
    assert store._writer is not None
    store._writer.join()
    assert store.write_failed and list(tmp_path.iterdir()) == []
    assert store.write(learner, ends=_tag().ends, wait=True)  # the stop's write: no raise
    assert store.write_failed and list(tmp_path.iterdir()) == []


class _BrokerDown(Snapshots):
    def changelog_tag(self, ends: dict[int, int] | None = None) -> SnapshotTag:
        raise KafkaEdgeError("cannot read the end offsets of t.embeddings: timed out")


def test_a_broker_that_cannot_tag_skips_the_snapshot_instead_of_stopping_the_trainer(
        tmp_path: Path) -> None:
    store = _BrokerDown(KafkaConfig(bootstrap_servers="127.0.0.1:9092"), folder=str(tmp_path),
                        transactional_id="t", max_age_s=60)
    learner = Learner(CONFIG, device=DEVICE)
    store.write(learner, ends=_tag().ends, wait=True)
    assert not store.path.exists()
    write_state(store.path, learner.state_dict(), _tag())
    assert store.load_into(Learner(CONFIG, device=DEVICE)) is None  # whole changelog instead


def test_a_tombstone_mid_changelog_keeps_histories_whose_items_come_later() -> None:
    # Without replay, u1 is published once, listing iY; iY's latest row comes
    # after the tombstones of an evicted item (iZ) and a forgotten user (u9).
    config = small_config(idle_ttl_ms=40_000, replay_ratio=0.0)
    live = Learner(config, device=DEVICE)
    log: Log = []
    log += _publish(live, [ev("a", "u2", "iZ", T0), ev("a9", "u9", "iZ", T0)])
    log += _publish(live, [ev("b", "u1", "iY", T0 + 30_000)])
    log += _publish(live, [ev("c", "u3", "iY", T0 + 60_000), ev("c2", "u2", "iW", T0 + 60_000)],
                    forget=("u9",))
    log += _publish(live, [ev("d", "u3", "iY", T0 + 65_000)])
    assert (b"item:iZ", None) in log and (b"user:u9", None) in log
    whole = Learner(config, device=DEVICE)
    apply_changelog(whole, log)
    recent = {r.key: r.recent_items for r in _all_rows(whole)}
    assert recent["user:u1"] == ("iY",)
    _same(_all_rows(whole), _all_rows(live))


def test_a_snapshot_that_does_not_load_falls_back_to_the_whole_changelog(tmp_path: Path) -> None:
    store = _FixedTag(KafkaConfig(bootstrap_servers="127.0.0.1:9092"), folder=str(tmp_path),
                      transactional_id="t", max_age_s=60)
    learner = Learner(CONFIG, device=DEVICE)
    state = learner.state_dict()
    del state["tables"]  # as if written by a version with another layout
    write_state(store.path, state, _tag())
    assert store.load_into(Learner(CONFIG, device=DEVICE)) is None
    assert not store.path.exists()  # never usable, and it may hold users erased since
    write_state(store.path, learner.state_dict(), _tag())
    assert store.load_into(Learner(CONFIG, device=DEVICE)) == _tag()
    assert store.path.exists()


def test_a_snapshot_this_changelog_cannot_use_is_deleted_and_a_killed_writes_tmp_too(
        tmp_path: Path) -> None:
    """Refused (too old, another topic or configuration), it stayed on disk for good with
    every user's state in it, erased users' included, as did the .tmp of a writer killed
    mid-write (helper review of the forget path)."""
    def store() -> _FixedTag:
        return _FixedTag(KafkaConfig(bootstrap_servers="127.0.0.1:9092"),
                         folder=str(tmp_path), transactional_id="t", max_age_s=60)

    first = store()
    write_state(first.path, Learner(CONFIG, device=DEVICE).state_dict(), _tag())
    first.path.with_name("t.snapshot.tmp").write_bytes(b"half written, then killed")
    restarted = store()
    assert not (tmp_path / "t.snapshot.tmp").exists()
    ahead = _tag(ends={0: 50, 1: 7})  # offsets past the topic's ends: may pass, so kept
    write_state(restarted.path, Learner(CONFIG, device=DEVICE).state_dict(), ahead)
    assert restarted.load_into(Learner(CONFIG, device=DEVICE)) is None
    assert restarted.path.exists()
    other = dataclasses.replace(CONFIG, lr=CONFIG.lr * 2)
    assert restarted.load_into(Learner(other, device=DEVICE)) is None
    assert not restarted.path.exists()


def test_a_format_1_file_loads_and_an_unknown_format_is_refused(tmp_path: Path) -> None:
    """Format 1 (before 2026-12-05) held every extra in both tables, histories in
    int64; a reader of format 1 must refuse format 2, so the number moved."""
    learner = Learner(CONFIG, device=DEVICE)
    learner.learn(random_events(64, seed=3))
    state = learner.state_dict()
    for name, table in state["tables"].items():
        rows, length = len(table["vec"]), learner.config.recent_items
        if name == "users":
            table["hist"] = table["hist"].long()
            table["logpop"] = torch.full((rows,), float("-inf"), dtype=torch.float64)
            table["released"] = torch.full((rows,), float("nan"), dtype=torch.float64)
        else:
            table["hist"] = torch.full((rows, length), -1, dtype=torch.int64)
    path = tmp_path / "old.snapshot"
    with open(path, "wb") as f:
        torch.save({"format": 1, "tag": dataclasses.asdict(_tag()), "state": state}, f)
    found = read_snapshot(path)
    assert found is not None
    again = Learner(CONFIG, device=DEVICE)
    again.load_state_dict(found[1])
    more = random_events(64, seed=4, start=5000)
    got, want = again.learn(more), learner.learn(more)
    assert want.n_applied > 0 and got.loss == want.loss
    write_state(path, learner.state_dict(), _tag())
    assert torch.load(path, weights_only=False)["format"] == 2  # what format-1 readers refuse
    with open(path, "wb") as f:
        torch.save({"format": 99, "tag": dataclasses.asdict(_tag()), "state": state}, f)
    with pytest.raises(ValueError, match="format 99"):
        read_snapshot(path)


@pytest.mark.parametrize("seed", range(8))
def test_the_changelog_in_any_chunks_restores_a_capped_table_with_late_events(seed: int) -> None:
    """A transaction writes its rows before its tombstones, and a late event keeps its
    user's row (touched in the batch, so not evicted) with an old event time. Restoring
    at the cap must not evict a live row to make room for one the tombstones free."""
    config = small_config(max_users=3, replay_ratio=0.0)
    live = Learner(config, device=DEVICE)
    rng = np.random.default_rng(seed)
    log: Log = []
    for b in range(6):
        events = [ev(f"e{b}-{k}", f"u{rng.integers(8)}", f"i{rng.integers(5)}",
                     T0 + 1_000 * b - int(rng.integers(0, 3_000)) * int(rng.random() < 0.5))
                  for k in range(4)]
        log += _publish(live, events)
    assert any(k and k.startswith(b"user:") and v is None for k, v in log), "the cap evicts"
    for size in (1, 2, 3, 5, len(log)):
        restored = Learner(config, device=DEVICE)
        for start in range(0, len(log), size):
            apply_changelog(restored, log[start:start + size])
        restored.finish_restore()
        assert sorted(restored.user_ids()) == sorted(live.user_ids()), size
        _same(_all_rows(restored), _all_rows(live))


def test_a_restore_in_a_running_trainer_keeps_what_rows_do_not_carry() -> None:
    """After an abort or a rebalance the trainer restores from the changelog, which starts
    the dedup window, admission counts, rate counters and replay buffer empty: a committed
    event's admission count was lost (the event without effect) and a re-sent copy of a
    committed event applied again. The state kept from the last commit goes back on."""
    config = small_config(admission_threshold=2)
    first = [ev("e1", "u1", "i1", T0), ev("e2", "u1", "i1", T0), ev("e3", "u1", "i2", T0),
             ev("e4", "u2", "i2", T0), ev("x1", "u9", "i1", T0 + 1)]  # u9: 1 of 2 events
    second = [ev("e3", "u1", "i2", T0), ev("x2", "u9", "i2", T0 + 2)]  # a copy; u9's 2nd
    ref = Learner(config, device=DEVICE)
    ref.learn(first)
    want = ref.learn(second)
    live = Learner(config, device=DEVICE)
    log = _publish(live, first)
    kept = live.volatile_state()  # at the commit
    live.learn(second)  # its transaction aborts: the learner goes back to the commit
    restored = Learner(config, device=DEVICE)
    apply_changelog(restored, log)
    restored.load_volatile_state(kept)
    got = restored.learn(second)
    assert got.outcomes == want.outcomes == (Outcome.DUPLICATE, Outcome.APPLIED)
    assert "u9" in restored.user_ids()
    _same(_all_rows(restored), _all_rows(ref))


def _restored(config: LearnerConfig, log: Log, kept: dict[str, Any],
              own: Collection[str]) -> Learner:
    """An abort's restore: the changelog, then the state kept at the last commit."""
    restored = Learner(config, device=DEVICE)
    apply_changelog(restored, log)
    restored.finish_restore()
    assert restored.load_volatile_state(kept, own_tombstones=own)
    return restored


def test_an_aborts_restore_keeps_what_came_after_the_trainers_own_tombstones() -> None:
    """The restore read back our own tombstones and took them for another trainer's
    erasures: it dropped the admission count of an event committed after a forget (the
    event without effect), and an evicted user's event ids, so a re-sent copy of a
    committed event was applied twice (review of the trainer)."""
    config = small_config(admission_threshold=2)
    live = Learner(config, device=DEVICE)
    log = _publish(live, [ev("e1", "u", "i1", T0), ev("e2", "u", "i2", T0 + 1)])
    log += _publish(live, [ev("w1", "w", "i1", T0 + 2)], forget=("u",))
    assert (b"user:u", None) in log
    log += _publish(live, [ev("e3", "u", "i1", T0 + 3)])  # u is back: 1 event of 2
    kept = live.volatile_state()
    after = [ev("e4", "u", "i2", T0 + 4)]
    want = live.learn(after)
    assert "u" in live.user_ids()
    restored = _restored(config, log, kept, own={"u"})
    assert restored.learn(after).outcomes == want.outcomes
    assert "u" in restored.user_ids()
    _same(_all_rows(restored), _all_rows(live))
    # Another trainer's tombstone (not ours): the user's kept entries go, as before.
    assert "u" not in _restored(config, log, kept, own=()).user_ids()

    capped = small_config(max_users=1)
    live = Learner(capped, device=DEVICE)
    log = _publish(live, [ev("e1", "u", "i1", T0)])
    log += _publish(live, [ev("e2", "v", "i1", T0 + 1)])  # evicts u at the cap
    assert (b"user:u", None) in log
    kept = live.volatile_state()
    resent = [ev("e1", "u", "i1", T0)]
    assert live.learn(resent).outcomes == (Outcome.DUPLICATE,)
    assert _restored(capped, log, kept, own={"u"}).learn(resent).outcomes == (
        Outcome.DUPLICATE,)


def test_a_changelog_record_that_does_not_decode_stops_the_restore_with_what_to_do() -> None:
    """It raised the codec's DecodeError, a traceback; a row skipped instead would lose
    its learned state. (`ChangelogError` is a KafkaEdgeError: the CLI prints it, exit 2.)
    The message did not name the record: the operator had to find its key elsewhere."""
    log = _publish(Learner(CONFIG, device=DEVICE), random_events(20, users=5, items=8, seed=4))
    value = next(v for k, v in log if k.startswith(b"user:") and v is not None)
    with pytest.raises(ChangelogError, match=r"\(key 'user:someone-else'\): key_mismatch.*"
                       r"printf 'user:someone-else\|' \| kcat"):
        apply_changelog(Learner(CONFIG, device=DEVICE), [*log, (b"user:someone-else", value)])
    # Tombstones and keyless records decode to nothing: the key named is still the bad one.
    with pytest.raises(ChangelogError, match=r"\(key 'user:someone-else'\)"):
        apply_changelog(Learner(CONFIG, device=DEVICE),
                        [(None, b"x"), *log, (b"meta:trainer", None),
                         (b"user:someone-else", value)])
    apply_changelog(Learner(CONFIG, device=DEVICE), log)  # without it, the log restores


def test_a_snapshot_keeps_the_tombstones_a_restore_over_the_cap_still_owes() -> None:
    """A restore over `max_users` evicts rows and the next step publishes their
    tombstones; a snapshot written before that step (an idle trainer's stop snapshot)
    dropped them, so a restart from it left those rows in the changelog for good."""
    big = Learner(LearnerConfig(max_users=20), device="cpu", seed=1)
    big.learn([Event(event_id=f"e{k}", user_id=f"u{k:02d}", item_id=f"i{k % 3}", ts=1000 * k,
                     kind=EventKind.CLICK) for k in range(20)])
    blocks = big.row_blocks(user_ids=big.user_ids(), item_ids=big.item_ids(),
                            model_version="v", now_ms=1)
    changelog = [(f"{b.entity}:{i}".encode(), v) for b in blocks
                 for i, v in zip(b.ids, encode_rows(b), strict=True)]
    capped = LearnerConfig(max_users=10)  # a takeover trainer's cap, or a lowered one
    restored = Learner(capped, device="cpu", seed=1)
    apply_changelog(restored, changelog)
    restored.finish_restore()
    from_snapshot = Learner(capped, device="cpu", seed=1)
    from_snapshot.load_state_dict(restored.state_dict())
    new = [Event(event_id="n1", user_id="new", item_id="i0", ts=50_000, kind=EventKind.CLICK)]
    owed = set(restored.learn(new).evicted_user_ids)
    assert len(owed) == 11  # ten over the cap, and one more to make room for "new"
    assert set(from_snapshot.learn(new).evicted_user_ids) == owed


def test_no_snapshot_older_than_the_changelog_keeps_tombstones_is_used(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A snapshot 3 h old passed the 6 h default while the topic kept tombstones 1 h: a
    forget after it, its tombstone compacted away, was missing from the restore, and the
    forgotten user came back (helper review)."""
    snapshots = Snapshots(KafkaConfig(), folder=str(tmp_path), transactional_id="t",
                          max_age_s=6 * 3600)
    snapshots.cap_age(86_400_000)  # Kafka's default, a day: the 6 h stays
    assert snapshots.max_age_ms == 6 * 3_600_000 and not caplog.records
    snapshots.cap_age(3_600_000)
    assert snapshots.max_age_ms == 3_600_000
    assert "not below the changelog's delete.retention.ms" in caplog.text


@pytest.mark.parametrize("changed", [{"dim": 4}, {"optimizer": "adam"}])
def test_a_changelog_of_other_learner_settings_is_a_configuration_error(
        changed: dict[str, object]) -> None:
    """-L dim=8 on a model learned at 64 failed with a tensor-size RuntimeError deep in the
    restore (exit 1, a supervisor restarting it for ever); now it says what to do (exit 2),
    before any row is applied, whether the meta record or rows come first (walkthrough)."""
    source = Learner(CONFIG, device=DEVICE)
    log = _publish(source, random_events(60, users=10, items=12, seed=1))
    rows_only = [(k, v) for k, v in log if k is not None and not k.startswith(b"meta:")]
    for records in (log, rows_only):
        other = Learner(dataclasses.replace(CONFIG, **changed), device=DEVICE)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="-L, \\[learner\\]") as err:
            apply_changelog(other, records)
        assert not other.user_ids() and not other.item_ids()
        assert ("dim=4" if "dim" in changed else "optimizer=adam") in str(err.value)


def test_snapshots_are_private_to_their_owner(tmp_path: Path) -> None:
    """The folder was made 0755 and the pickle 0644, while the README says to keep them
    private (walkthrough): a pickle runs code when loaded, and holds every user's state."""
    import stat

    folder = tmp_path / "snaps"
    Snapshots(KafkaConfig(bootstrap_servers="127.0.0.1:9092"), folder=str(folder),
              transactional_id="t", max_age_s=1)
    path = folder / "t.snapshot"
    path.with_name("t.snapshot.tmp").write_bytes(b"left over")
    path.with_name("t.snapshot.tmp").chmod(0o644)
    write_state(path, Learner(CONFIG, device=DEVICE).state_dict(), _tag())
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


class _Planted:
    """A pickle that runs code when loaded: what anyone able to write the file could plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_a_planted_snapshot_runs_no_code_and_is_refused_as_unreadable(tmp_path: Path) -> None:
    """Loaded with weights_only=False, the pickle's __reduce__ ran in the trainer before the
    format check refused it (security review)."""
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "t.snapshot"
    torch.save({"format": 1, "tag": {}, "state": _Planted(marker)}, path)
    with pytest.raises(ValueError, match="is unreadable"):
        read_snapshot(path)
    assert not marker.exists()


def test_a_restore_does_not_bring_back_a_user_another_trainer_erased() -> None:
    """Trainer A saw u; trainer B erased u; A committed after B, so the changelog's one
    forget count (the last writer's) matched A's saved state, which A then put back over
    the restore: u's events (dedup window), rate count and admission count
    came back, and into A's next snapshot (review)."""
    cfg = small_config(admission_threshold=3, rate_cap_events=100)
    topics = TopicNames(prefix="t.")
    a = Learner(cfg, device=DEVICE)
    a.learn([ev("e1", "u", "i1", T0), ev("e2", "u", "i2", T0 + 1)])  # u pending, 2 events
    b = Learner(cfg, device=DEVICE)
    b.forget_user("u", requested=True)
    b.forget_user("u", requested=True)
    meta_b = {**b.global_state(), "model_version": "b", "updated_at": 0}
    log = [(r.key, r.value) for r in output_records(topics, [], ["user:u"], meta_b, [])]
    a.learn([ev("e3", "w", "i1", T0 + 2)])  # A commits after B's forget
    saved = a.volatile_state()
    assert "u" in saved["rate"] and dict(saved["pending"]["users"]).get("u") == 2
    assert any(c[0] == "u" for c in saved["dedup"]["contents"])
    meta_a = {**a.global_state(), "model_version": "a", "updated_at": 0}
    blocks = a.row_blocks(user_ids=["w"], item_ids=["i1"], model_version="a", now_ms=0)
    log += [(r.key, r.value) for r in output_records(topics, blocks, [], meta_a, [])]
    restored = Learner(cfg, device=DEVICE)
    apply_changelog(restored, log)
    restored.finish_restore()
    restored.load_volatile_state(saved)
    state = restored.volatile_state()
    assert "u" not in state["rate"] and "u" not in dict(state["pending"]["users"])
    assert not any(c[0] == "u" for c in state["dedup"]["contents"])
    assert "w" in state["rate"]  # the rest of the saved state is back


def test_items_evicted_and_admitted_again_restore_alike_from_snapshot_or_changelog(
        tmp_path: Path) -> None:
    """An evicted item leaves the users' histories and those users are published again,
    so a restore resolving recent items against the items live at the end cannot bring it
    back into the history of a user who has been idle since (docs/RELIABILITY.md named this
    as the one difference between the two restores until 2026-12-07)."""
    config = small_config(max_items=6, replay_ratio=0.0)  # LRU; no replay republishes `idle`
    live = Learner(config, device=DEVICE)
    log: Log = []
    path = tmp_path / "t.snapshot"

    def batch(n: int, users: list[str], items: list[str]) -> list[Event]:
        return [ev(f"b{n}-{k}", users[k % len(users)], item, T0 + 1_000 * n + k)
                for k, item in enumerate(items)]

    old, new = [f"i{k}" for k in range(6)], [f"j{k}" for k in range(6)]
    log += _publish(live, batch(0, ["idle"], old))  # then idle to the end
    tag = SnapshotTag(topic="t.embeddings", topic_id="id", ends={0: len(log)}, written_ms=0)
    write_state(path, live.state_dict(), tag)
    log += _publish(live, batch(1, ["a", "b"], new))  # evicts every item of `idle`
    log += _publish(live, batch(2, ["c", "d"], old[:3] + new[:3]))  # three come back
    assert all((f"item:{i}".encode(), None) in log for i in old)
    assert {"i0", "i1", "i2"} <= set(live.item_ids())
    found = read_snapshot(path)
    assert found is not None
    from_snapshot = Learner(config, device=DEVICE)
    from_snapshot.load_state_dict(found[1])
    apply_changelog(from_snapshot, log[tag.ends[0]:])
    whole = Learner(config, device=DEVICE)
    apply_changelog(whole, log)
    _same(_all_rows(from_snapshot), _all_rows(live))
    _same(_all_rows(whole), _all_rows(live))
    [idle] = live.rows(user_ids=["idle"], model_version="v", now_ms=0)
    assert idle.recent_items == ()


def _rows(learner: Learner, users: list[str], version: str) -> Log:
    """The changelog records of `users`' rows, published as trainer `version`."""
    blocks = learner.row_blocks(user_ids=users, model_version=version, now_ms=0)
    return [(f"user:{ident}".encode(), value)
            for block in blocks for ident, value in zip(block.ids, encode_rows(block))]


@pytest.mark.parametrize("writer", ["trainer-b-7", "trainer-a-9"])
def test_what_is_kept_of_a_user_another_trainer_published_is_dropped_at_a_restore(
        writer: str) -> None:
    """Trainer B forgets y and sees y again in one transaction: it publishes y's new row and
    no tombstone, and the shared forget count is trainer A's again at A's next commit.
    A's restore then put back the duplicate-check entries of y's erased events, into
    its next snapshot too (helper review of the forget path). A's own row is the control."""
    config = small_config(replay_ratio=1.0)
    a = Learner(config, device=DEVICE)
    log = _publish(a, [ev("y-old", "y", "i1", T0), ev("z-old", "z", "i2", T0)],
                   version="trainer-a-1")
    kept = a.volatile_state()
    b = Learner(config, device=DEVICE)
    apply_changelog(b, log)
    b.finish_restore()
    b.forget_user("y", requested=True)
    b.learn([ev("y-new", "y", "i2", T0 + 1_000)])
    log += _rows(b, ["y"], writer)  # (A's meta, written last, keeps A's count)
    restored = Learner(config, device=DEVICE)
    apply_changelog(restored, log, instance_id="trainer-a")
    restored.finish_restore()
    assert restored.load_volatile_state(kept)
    restored._purge_forgotten()  # noqa: SLF001 (what the next evaluate or learn does first)
    assert "z-old" in restored._dedup  # noqa: SLF001
    assert ("y-old" in restored._dedup) is (writer == "trainer-a-9")  # noqa: SLF001
    replayed = set(restored._replay.users[:restored._replay.size])  # noqa: SLF001
    assert "z" in replayed and ("y" in replayed) is (writer == "trainer-a-9")


def test_a_snapshot_keeps_nothing_of_a_user_another_trainer_published_after_it() -> None:
    """The same through a snapshot: written by trainer A before B forgot y and saw y again,
    loaded after, its duplicate-check entries and replay events of y came back."""
    config = small_config(replay_ratio=1.0)
    a = Learner(config, device=DEVICE)
    log = _publish(a, [ev("y-old", "y", "i1", T0), ev("z-old", "z", "i2", T0)],
                   version="trainer-a-1")
    snapshot, at = a.state_dict(), len(log)
    b = Learner(config, device=DEVICE)
    apply_changelog(b, log)
    b.finish_restore()
    b.forget_user("y", requested=True)
    b.learn([ev("y-new", "y", "i2", T0 + 1_000)])
    log += _rows(b, ["y"], "trainer-b-7")
    restored = Learner(config, device=DEVICE)
    restored.load_state_dict(snapshot)
    apply_changelog(restored, log[at:], instance_id="trainer-a")
    restored.finish_restore()
    restored._purge_forgotten()  # noqa: SLF001 (what the next evaluate or learn does first)
    assert "z-old" in restored._dedup and "y-old" not in restored._dedup  # noqa: SLF001
    replayed = set(restored._replay.users[:restored._replay.size])  # noqa: SLF001
    assert replayed == {"z"}


def test_a_folder_that_cannot_be_read_or_a_foreign_state_falls_back_to_the_changelog(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error from the folder's stat (permissions changed, NFS, a failing disk) and a
    file whose state is no dict escaped `load_into`: the trainer stopped (exit 1) at its
    next restore, where a snapshot is only a speed-up (review of the snapshot path)."""
    store = _FixedTag(KafkaConfig(bootstrap_servers="127.0.0.1:9092"), folder=str(tmp_path),
                      transactional_id="t", max_age_s=60)
    learner = Learner(CONFIG, device=DEVICE)
    write_state(store.path, [1, 2], _tag())  # type: ignore[arg-type]
    assert store.load_into(Learner(CONFIG, device=DEVICE)) is None
    write_state(store.path, learner.state_dict(), _tag())

    def unreadable(_path: Path) -> bool:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "exists", unreadable)
    assert store.load_into(Learner(CONFIG, device=DEVICE)) is None
    monkeypatch.undo()
    assert store.load_into(Learner(CONFIG, device=DEVICE)) == _tag()  # the control


def test_a_state_that_cannot_be_copied_skips_the_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of memory while copying the tables (on a GPU, the copies stayed there for the
    seconds the write takes) stopped the trainer, where a failed write only costs the
    next restart's speed."""
    store = _FixedTag(KafkaConfig(bootstrap_servers="127.0.0.1:9092"), folder=str(tmp_path),
                      transactional_id="t", max_age_s=60)
    learner = Learner(CONFIG, device=DEVICE)

    def out_of_memory() -> dict[str, Any]:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(learner, "state_dict", out_of_memory)
    assert store.write(learner, ends=_tag().ends, wait=True) is False
    assert store.write_failed and not store.path.exists()



def test_a_folder_that_refuses_fsync_still_takes_writes_and_deletes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some filesystems (FUSE, NFS) refuse fsync on a folder: counted as a failure, every
    write there looked failed after it was done, rewritten at every interval, and the
    file written after an erasure was then deleted (review of the folder fsync)."""
    import errno
    import os
    import stat

    import stream_app.trainer.snapshot as snapshot_module

    real_fsync = os.fsync

    def refusing(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(snapshot_module.os, "fsync", refusing)
    store = _FixedTag(KafkaConfig(bootstrap_servers="127.0.0.1:9092"), folder=str(tmp_path),
                      transactional_id="t", max_age_s=60)
    assert store.write(Learner(CONFIG, device=DEVICE), ends=_tag().ends, wait=True)
    assert not store.write_failed and store.path.exists()
    store.discard("test", erasures=1)
    assert not store.path.exists()
