"""Local snapshots of the learner, tagged with the changelog offsets they match.

Restoring from the changelog alone reads every row ever published. A snapshot
is the learner's full `state_dict()` written while the changelog held exactly
that model up to the tagged end offsets; restore then loads it and applies
only the changelog records after the tag. It also brings back what rows do
not carry: the dedup window, the replay buffer and rate-cap counters.

A snapshot is only written while this trainer owns every input partition, so
no other trainer can have published rows the snapshot lacks. It is ignored,
with the reason logged, when anything says it may not match the changelog:
another topic (name or id: a re-created topic), offsets past the topic's end,
another learner configuration, or an age past `snapshot_max_age_s` (compaction
removes tombstones after the topic's `delete.retention.ms`, and a deleted row
must not come back).

The file is written by `torch.save` and read back with `weights_only` (tensors,
numpy arrays and plain values only), so a planted file cannot run code; keep the
folder private to the trainer all the same: the file holds every user's state.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_app.config import ConfigError, KafkaConfig
from stream_app.core import Learner
from stream_app.kafka.admin import topic_id
from stream_app.kafka.ends import high_watermarks
from stream_app.kafka.exceptions import KafkaEdgeError

log = logging.getLogger(__name__)

FORMAT = 2
"""2 since 2026-12-05: each table holds only its entity's extras, histories in int32.
A reader of format 1 would load a format-2 state and fail at its first step, so
it must refuse the file (and restore from the changelog), hence the new number."""
READABLE = frozenset({1, 2})
"""Format 1 still loads: `Table.load_state` drops its unused extras."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotTag:
    """Which changelog a snapshot matches: topic name and id, end offset per partition."""

    topic: str
    topic_id: str
    ends: dict[int, int]
    written_ms: int


def temp_of(path: Path) -> Path:
    """Where `write_state` writes before its rename."""
    return path.with_name(path.name + ".tmp")


def write_state(path: Path, state: dict[str, Any], tag: SnapshotTag) -> None:
    """Write atomically (temp file, fsync, rename): a crash leaves the old one intact.

    Owner-only (0600): it holds every user's learned state."""
    tmp = temp_of(path)
    tmp.unlink(missing_ok=True)  # a left-over one may have wider permissions
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            torch.save({"format": FORMAT, "tag": dataclasses.asdict(tag), "state": state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written file holds users' state too
        raise
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder after a rename or a delete in it: without it, a power loss could
    bring back the file before (an older snapshot, or one deleted after an erasure).

    Best effort: some filesystems (FUSE, NFS) refuse fsync on a folder, and counted as
    a failure it made every write and delete there look failed after it had been done.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.debug("fsync of folder %s refused (%s): a power loss may undo its last change",
                  folder, exc)


_NUMPY_GLOBALS: list[Any] = [getattr(importlib.import_module("numpy._core.multiarray"),
                                      "_reconstruct"),
                              np.ndarray, np.dtype,
                              *(getattr(np.dtypes, name) for name in np.dtypes.__all__)]
"""What the learner's state holds besides tensors and plain values: numpy arrays.
`weights_only` loading builds nothing else, so a snapshot file someone else could write
runs no code in the trainer (security review: a pickle's __reduce__ ran at load)."""


def read_snapshot(path: Path) -> tuple[SnapshotTag, dict[str, Any]] | None:
    """(tag, learner state) of the file, or None when there is none.

    Raises ValueError when the file is there but unreadable or of another format, or
    the folder cannot be read (an error there stopped the trainer at its next restore).
    """
    try:
        if not path.exists():
            return None
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        if obj.get("format") not in READABLE:
            raise ValueError(f"format {obj.get('format')!r}, expected one of {sorted(READABLE)}")
        tag = obj["tag"]
        if not isinstance(obj["state"], dict):
            raise ValueError(f"its state is a {type(obj['state']).__name__}, not a dict")
        return SnapshotTag(topic=tag["topic"], topic_id=tag["topic_id"],
                           ends={int(p): int(o) for p, o in tag["ends"].items()},
                           written_ms=int(tag["written_ms"])), obj["state"]
    except Exception as exc:  # a torn or foreign file: say which, restore without it
        raise ValueError(f"snapshot {path} is unreadable: {exc}") from exc


def why_unusable(tag: SnapshotTag, state: dict[str, Any], *, now: SnapshotTag,
                 config: dict[str, Any], max_age_ms: int) -> str | None:
    """Why the snapshot `tag` may not match the changelog as it is `now`; None when it does.

    `config` is the running learner's configuration (`dataclasses.asdict`).

    >>> t = SnapshotTag(topic="e", topic_id="A", ends={0: 5}, written_ms=0)
    >>> why_unusable(t, {}, now=dataclasses.replace(t, topic_id="B"), config={}, max_age_ms=1)
    'it was written for another topic (e, id A; now e, id B)'
    """
    if (tag.topic, tag.topic_id) != (now.topic, now.topic_id):
        return (f"it was written for another topic ({tag.topic}, id {tag.topic_id}; "
                f"now {now.topic}, id {now.topic_id})")
    if set(tag.ends) != set(now.ends) or any(tag.ends[p] > now.ends[p] for p in now.ends):
        return f"its offsets {tag.ends} do not fit the topic's end offsets {now.ends}"
    age_ms = now.written_ms - tag.written_ms
    if age_ms > max_age_ms:
        return (f"it is {age_ms / 3.6e6:.1f} h old, over trainer.snapshot_max_age_s; "
                "tombstones it has not seen may be compacted away")
    if state.get("config") != config:
        return "it was written with another learner configuration"
    return None


class Snapshots:
    """One trainer instance's snapshot file, checked against the changelog as it is now."""

    def __init__(self, kafka: KafkaConfig, *, folder: str, transactional_id: str,
                 max_age_s: float, on_written: Callable[[], None] | None = None) -> None:
        try:
            Path(folder).mkdir(mode=0o700, parents=True, exist_ok=True)  # a new one: private
        except OSError as exc:
            raise ConfigError(f"trainer.snapshot_dir {folder!r} cannot be created: {exc}") from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"trainer.snapshot_dir {folder!r} is not writable by this user")
        self.kafka = kafka
        self.path = Path(folder) / f"{transactional_id}.snapshot"  # one file per instance
        # What a writer killed mid-write left (no writer of this instance runs yet): it
        # holds users' state, erased ones' included, and nothing else would delete it.
        temp_of(self.path).unlink(missing_ok=True)
        self.client_id = f"{transactional_id}-snapshot"
        self.max_age_ms = int(max_age_s * 1000)
        self.on_written = on_written
        self.write_failed = False  # the last write's outcome: a failed one is due again
        self.erasures = 0
        """The trainer's count of erasures (`Ownership._snapshot`) the file reflects: as of
        the last write that landed, or of its deletion."""
        self._writer: threading.Thread | None = None

    def cap_age(self, tombstones_kept_ms: int) -> None:
        """Use no snapshot older than the changelog keeps tombstones (its
        delete.retention.ms): one older may miss a forget whose tombstone compaction
        has removed since, and restore the forgotten user."""
        if tombstones_kept_ms < self.max_age_ms:
            log.warning("trainer.snapshot_max_age_s (%.0f s) is not below the changelog's "
                        "delete.retention.ms (%.0f s): snapshots older than that are not used",
                        self.max_age_ms / 1000, tombstones_kept_ms / 1000)
            self.max_age_ms = tombstones_kept_ms

    def changelog_tag(self, ends: dict[int, int] | None = None) -> SnapshotTag:
        """The changelog now, at `ends` (default: its high watermarks)."""
        topic = self.kafka.topics.embeddings
        if ends is None:
            ends = high_watermarks(self.kafka, topic, client_id=self.client_id)
        return SnapshotTag(topic=topic, topic_id=topic_id(self.kafka, topic), ends=ends,
                           written_ms=int(time.time() * 1000))

    def load_into(self, learner: Learner) -> SnapshotTag | None:
        """Load the snapshot into the fresh `learner`; its tag (the offsets to go on from).

        None (restore from the changelog's beginning) when there is none yet
        or it may not match the changelog (the reason is logged); after a
        failed load `learner` may be partly filled: use a fresh one.
        """
        try:
            found = read_snapshot(self.path)
        except ValueError as exc:  # kept: the folder may be unreadable for a while
            log.warning("%s; restoring from the whole changelog", exc)
            return None
        if found is None:
            return None
        tag, state = found
        try:
            now = self.changelog_tag()
        except KafkaEdgeError as exc:
            log.warning("snapshot %s not checked (%s); restoring from the whole changelog",
                        self.path, exc)
            return None
        config = dataclasses.asdict(learner.config)
        reason = why_unusable(tag, state, now=now, config=config, max_age_ms=self.max_age_ms)
        if reason is not None:
            # Offsets ahead of the topic's ends may pass (a leader change); the rest lasts.
            passing = why_unusable(tag, state, now=dataclasses.replace(now, ends=tag.ends),
                                   config=config, max_age_ms=self.max_age_ms) is None
            if passing:
                log.warning("snapshot %s not used: %s; restoring from the whole changelog",
                            self.path, reason)
            else:
                self._remove_unusable(f"snapshot {self.path} not used: {reason}")
            return None
        try:
            learner.load_state_dict(state)
        except Exception as exc:  # written by another version: restore without it, never crash
            self._remove_unusable(f"snapshot {self.path} does not load ({exc!r})")
            return None
        log.info("loaded snapshot %s; reading the changelog from offsets %s", self.path,
                 tag.ends)
        return tag

    def _remove_unusable(self, why: str) -> None:
        """A file this changelog can never use goes: it may hold users erased since, and
        the next write replaces it anyway. Not while a write runs (a restore inside
        the process): the file it lands replaces the one judged."""
        if self._writer is not None and self._writer.is_alive():
            log.warning("%s; restoring from the whole changelog", why)
            return
        log.warning("%s; restoring from the whole changelog, and deleting it", why)
        try:
            self.path.unlink(missing_ok=True)
            sync_folder(self.path.parent)
        except OSError as exc:
            log.error("could not delete snapshot %s: %s; delete it by hand", self.path, exc)

    def write(self, learner: Learner, *, ends: dict[int, int], wait: bool,
              erasures: int = 0) -> bool:
        """Take the learner's state now, tagged with the changelog's end offsets `ends`
        (which must be what the learner holds); write it in a background thread unless
        `wait`. False when it was skipped (a write still running, or no tag).

        Called between transactions: the state (tensors copied to host memory, lists copied;
        ~0.4 s at 1M rows) is taken here, while serialising and fsyncing it
        (seconds at 1M rows) runs beside the loop. A write still running when
        the next is due makes that one skip; `wait` (a clean stop) waits for
        it and writes synchronously.
        """
        if self._writer is not None and self._writer.is_alive():
            if not wait:
                return False
            self._writer.join()
        try:
            tag = self.changelog_tag(ends)
        except KafkaEdgeError as exc:
            log.warning("snapshot skipped: %s", exc)
            self.write_failed = True  # due again; a file older than an erasure goes
            return False
        try:
            state = learner.state_dict()
        except (RuntimeError, MemoryError) as exc:  # out of memory (host, or CUDA's own)
            log.error("snapshot skipped: the learner's state could not be copied: %s", exc)
            self.write_failed = True
            return False
        if wait:
            self._write(state, tag, erasures)
            return True
        self._writer = threading.Thread(target=self._write, args=(state, tag, erasures),
                                        name="snapshot-writer", daemon=True)
        self._writer.start()
        return True

    def busy(self) -> bool:
        """A background write is still running."""
        return self._writer is not None and self._writer.is_alive()

    def discard(self, why: str, erasures: int) -> None:
        """Delete the snapshot file (after a write still running): a restart then restores
        from the whole changelog. Tried once per call's `erasures`: a file that cannot be
        deleted is reported as an error, not again at every turn."""
        if self._writer is not None and self._writer.is_alive():
            self._writer.join()
        self.erasures = erasures
        try:
            self.path.unlink(missing_ok=True)
            temp_of(self.path).unlink(missing_ok=True)
            sync_folder(self.path.parent)
        except OSError as exc:
            log.error("could not delete snapshot %s (%s): %s; delete it by hand", self.path,
                      why, exc)
            return
        log.info("deleted snapshot %s: %s", self.path, why)

    def _write(self, state: dict[str, Any], tag: SnapshotTag, erasures: int = 0) -> None:
        """A failed write costs only restore speed: logged, not raised."""
        try:
            write_state(self.path, state, tag)
        except (OSError, RuntimeError) as exc:  # torch.save's full disk is a RuntimeError
            # ("[enforce fail at inline_container.cc] ... file write failed"): it killed the
            # background writer unlogged, and raised out of a clean stop (exit 1)
            self.write_failed = True
            log.warning("could not write snapshot %s: %s", self.path, exc)
            return
        self.write_failed = False
        self.erasures = max(self.erasures, erasures)
        log.info("wrote snapshot %s", self.path)
        if self.on_written is not None:
            self.on_written()
