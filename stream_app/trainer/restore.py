"""Rebuild the learner from the compacted `embeddings` changelog.

The topic holds the latest committed state of every row (and `meta:trainer`
with the global learner state), so applying it in order to a fresh learner
gives back the model that published it. Records are read in chunks, a few
ahead of the one being applied, and each chunk keeps only the last value per
key, so memory stays at a few chunks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator
from contextlib import closing
from dataclasses import dataclass
from typing import TypeVar

from stream_app.codec import (
    DecodeError,
    decode_changelog_rows,
    decode_embedding,
    decode_meta,
    is_meta_key,
    split_embedding_key,
)
from stream_app.config import ConfigError, KafkaConfig
from stream_app.core import Learner
from stream_app.core.optim import SLOTS
from stream_app.events import KeyValue
from stream_app.heap import paused_gc, release_free_memory
from stream_app.kafka.ends import read_to_end
from stream_app.kafka.exceptions import ChangelogError

log = logging.getLogger(__name__)
T = TypeVar("T")
READ_AHEAD = 2
"""Chunks (of up to 5,000 records) read ahead of the one being applied."""


@dataclass(frozen=True, slots=True)
class RestoreStats:
    """`ends`: the changelog's end offset per partition that the restore read up to."""

    users: int
    items: int
    tombstones: int
    seconds: float
    ends: dict[int, int]


def restore(learner: Learner, kafka: KafkaConfig, *, client_id: str,
            on_chunk: Callable[[], None] | None = None,
            start: dict[int, int] | None = None, settle_s: float = 0.0,
            instance_id: str | None = None) -> RestoreStats:
    """Apply every committed row of the changelog to `learner` (which should be fresh).

    With `start` (offsets per partition, from a snapshot's tag) only the
    records from there on are applied, onto the learner the snapshot loaded.
    `on_chunk` is called after each applied chunk (the trainer's watchdog beat).
    `settle_s`: how long the end offsets may wait for open transactions and
    pending markers (`read_to_end`), so that `ends` counts the markers of the
    commits and aborts before the restore. `instance_id`: the restoring trainer's;
    see `apply_changelog`.
    """
    began = time.monotonic()
    users = items = tombstones = 0
    ends: dict[int, int] = {}
    chunks = read_to_end(kafka, kafka.topics.embeddings, client_id=client_id,
                         ends_seen=ends, start=start, settle_s=settle_s)
    with paused_gc(), closing(_read_ahead(chunks, READ_AHEAD)) as ready:
        for chunk in ready:
            u, i, t = apply_changelog(learner, chunk, instance_id=instance_id)
            users, items, tombstones = users + u, items + i, tombstones + t
            if on_chunk is not None:
                on_chunk()
        learner.finish_restore()
    release_free_memory()
    stats = RestoreStats(users=users, items=items, tombstones=tombstones,
                         seconds=time.monotonic() - began, ends=ends)
    sizes = learner.table_sizes()
    log.info("restored from the changelog%s: users=%d items=%d tombstones=%d seconds=%.2f; "
             "the model holds users=%d items=%d", " after the snapshot" if start else "",
             stats.users, stats.items, stats.tombstones, stats.seconds,
             sizes["users"], sizes["items"])
    return stats


WAIT_BEAT_S = 1.0
"""While the changelog read waits, how often `_read_ahead` hands out an empty chunk."""


def _read_ahead(chunks: Generator[T, None, None], depth: int) -> Generator[T, None, None]:
    """The items of `chunks`, read by a thread that keeps up to `depth` of them ready.

    Reading the changelog mostly waits on the broker (a plain read of 200K
    rows used a quarter of a core), and decoding is CPU work, so the two
    overlap. When this generator ends or is closed, the thread is stopped
    (between two chunks: empty ones are skipped, so a waiting read stops
    too) and `chunks` closed (which closes its consumer) first; the thread's
    error, if any, is raised here. Empty items go out at most every WAIT_BEAT_S.
    """
    ready: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def read() -> None:
        end = _End(None)
        handed = time.monotonic()
        try:
            with closing(chunks):
                for chunk in chunks:  # empty ones come while the read waits
                    if stop.is_set():
                        break
                    # One empty chunk a second goes out too: the caller's on_chunk beats
                    # the stall watchdog while the read waits on an open transaction.
                    if chunk or time.monotonic() - handed >= WAIT_BEAT_S:
                        ready.put(chunk)
                        handed = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            end = _End(exc)
        ready.put(end)

    reader = threading.Thread(target=read, name="changelog-reader", daemon=True)
    reader.start()
    try:
        while not isinstance(item := ready.get(), _End):
            yield item
        if item.error is not None:
            raise item.error
    finally:
        stop.set()
        while reader.is_alive() or not ready.empty():  # a blocked put returns, sees `stop`
            try:
                item = ready.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, _End) and item.error is not None:
                log.warning("changelog reader failed after the restore stopped: %s", item.error)


@dataclass(frozen=True, slots=True)
class _End:
    """The last item `_read_ahead`'s thread queues: how the read ended."""

    error: BaseException | None


def apply_changelog(learner: Learner, records: list[KeyValue], *,
                    instance_id: str | None = None) -> tuple[int, int, int]:
    """Apply changelog records (key, value) in log order; (users, items, tombstones) applied.

    Only the last value per key counts, so a chunk is reduced to its latest
    records first. A tombstone deletes the row: a forgotten or evicted user,
    an evicted item. A record that does not decode raises `ChangelogError`:
    skipping it would drop that row's learned state and its update count, so
    the restored model would no longer be the one that published.
    With `instance_id`, users whose row another trainer published are
    `Learner.distrust`ed: that trainer may have erased them and seen them again
    in one transaction, which publishes their new row and no tombstone.
    """
    try:
        return _apply_latest(learner, records, instance_id)
    except DecodeError as exc:
        key = _bad_key(records)
        named = "its key" if key is None else f"its key, {key!r}"
        raise ChangelogError(
            f"the embeddings changelog holds a record the trainer cannot restore"
            f"{'' if key is None else f' (key {key!r})'}: {exc}. "
            "Only this model's trainers write that topic: the record came from another "
            f"producer or a stream_app version with another row format. Delete it with a "
            f"tombstone for {named} (printf '{key or 'KEY'}|' | kcat -P -b BROKER -t TOPIC "
            "-K'|' -Z), or start the model on a new topic prefix") from exc


def _bad_key(records: list[KeyValue]) -> str | None:
    """The key of the last record of a key that does not decode on its own (the columnar
    decode that failed does not say which): the one an operator must tombstone."""
    latest = {key: value for key, value in records if key is not None}
    for key, value in latest.items():
        if value is None:  # a tombstone decodes to nothing, and fails nothing
            continue
        try:
            if is_meta_key(key):
                decode_meta(value)
            else:
                decode_embedding(key, value)
        except DecodeError:
            return key.decode("utf-8", "replace")
    return None


def _apply_latest(learner: Learner, records: list[KeyValue],
                  instance_id: str | None) -> tuple[int, int, int]:
    latest: dict[bytes, bytes | None] = {}
    for key, value in records:
        if key is not None:
            latest.pop(key, None)  # keep log order: re-insert at the end
            latest[key] = value
    for key, value in latest.items():  # before any row: a row of another shape fails less clearly
        if is_meta_key(key) and value is not None:
            meta = decode_meta(value)
            _check_shape(learner, len(meta["cold_user"]["vec"]), set(meta["cold_user"]["opt"]))
    users = items = tombstones = 0
    run: list[tuple[bytes | None, bytes]] = []  # rows since the last tombstone
    for key, value in latest.items():
        if is_meta_key(key):
            if value is not None:
                learner.apply_global_state(decode_meta(value))
            continue
        if value is not None:
            run.append((key, value))
            continue
        u, i = _apply_run(learner, run, instance_id)
        users, items, run = users + u, items + i, []
        entity, ident = split_embedding_key(key)
        if entity == "user":
            learner.forget_user(ident)
        else:
            learner.forget_item(ident)
        tombstones += 1
    u, i = _apply_run(learner, run, instance_id)
    return users + u, items + i, tombstones


def _apply_run(learner: Learner, run: list[tuple[bytes | None, bytes]],
               instance_id: str | None) -> tuple[int, int]:
    """Decode and apply rows as columns; (users, items) applied."""
    counts = {"user": 0, "item": 0}
    for rows in decode_changelog_rows(run):
        opt = rows.state.get("opt")
        _check_shape(learner, rows.vectors.shape[1], set(opt) if isinstance(opt, dict) else None)
        learner.apply_columns(rows)
        counts[rows.entity] = len(rows)
        if rows.entity == "user" and instance_id is not None:
            learner.distrust(u for u, w in zip(rows.ids, rows.writers, strict=True)
                             if w != instance_id)
    return counts["user"], counts["item"]


def _check_shape(learner: Learner, dim: int, slots: set[str] | None) -> None:
    """The changelog's model must have this learner's `dim` and optimiser: a trainer
    started with other settings than the one that published it (-L dim=8 on a model of 64)
    failed with a tensor-size RuntimeError deep in the restore, exit 1 (walkthrough)."""
    cfg = learner.config
    want = set(SLOTS[cfg.optimizer])
    problems = [] if dim == cfg.dim else [f"dim={dim} (this trainer: dim={cfg.dim})"]
    if slots is not None and slots != want:
        problems.append(f"optimiser state {sorted(slots)} (this trainer's "
                        f"optimizer={cfg.optimizer} keeps {sorted(want)})")
    if problems:
        raise ConfigError(
            f"the embeddings changelog holds a model with {' and '.join(problems)}. Start "
            "the trainer with the settings that model was learned with (-L, [learner], "
            "STREAM_APP_LEARNER_*), or start a new model on a new --topic-prefix")
