"""The trainer's learner kept equal to the changelog: restore, scope, snapshots.

A mixin of `Trainer` (`trainer.loop`), split off so the loop reads as poll →
learn → commit: these methods decide when the learner must be rebuilt from the
`embeddings` changelog (start, abort, a rebalance that brings rows someone else
wrote), which users this trainer may publish while others own partitions, and
when a local snapshot may be written and with which offsets. They share the
fields below with the loop, declared here so each side type-checks alone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from stream_app.config import KafkaConfig, TopicNames
from stream_app.core import Learner, LearnerConfig
from stream_app.kafka.admin import check_co_partitioned
from stream_app.kafka.clients import TRANSACTIONAL_DEFAULTS, ms_setting
from stream_app.kafka.consumer import GroupConsumer
from stream_app.kafka.exceptions import (
    BrokerError,
    BrokerUnavailable,
    ChangelogError,
    ConfigConflictError,
    FatalTransactionError,
    KafkaEdgeError,
    TopicError,
)
from stream_app.kafka.records import Partition
from stream_app.observability.metrics import TrainerMetrics
from stream_app.trainer.config import TrainerConfig
from stream_app.trainer.observe import report_table_rows
from stream_app.trainer.own_writes import MARKERS_WAIT_S, OwnTombstones, OwnWrites
from stream_app.trainer.restore import restore
from stream_app.trainer.snapshot import Snapshots
from stream_app.watchdog import Heartbeat

log = logging.getLogger(__name__)


class RestoreStopped(Exception):  # noqa: N818 - a stop, not an error
    """A stop (SIGTERM/SIGINT) came during a restore. The learner is half built, so the
    trainer leaves at once: no snapshot, no commit, and no group join after a start's
    restore. A restore can outlast any fixed limit, and the stop used to wait for it."""


@contextlib.contextmanager
def transient(what: str) -> Iterator[None]:
    """A Kafka error meanwhile (a broker bouncing) ends the trainer as BrokerUnavailable, exit
    75: a restart restores from the changelog and the committed offsets, as this would
    have. Exit 1 (any other failure) was what a supervisor that restarts on 75 left down.
    Errors an operator must act on (a bad changelog row, missing topics, a fenced
    producer) pass unchanged.

    >>> try:
    ...     with transient("the restore"):
    ...         raise KafkaEdgeError("timed out")
    ... except BrokerUnavailable as exc:
    ...     print(exc)
    the restore failed: timed out; stopping (exit 75): a restart restores from the changelog
    >>> with transient("the restore"):
    ...     raise ChangelogError("user:u1 at offset 7 cannot be restored")
    Traceback (most recent call last):
    ...
    stream_app.kafka.exceptions.ChangelogError: user:u1 at offset 7 cannot be restored
    """
    try:
        yield
    except (BrokerError, ChangelogError, TopicError, FatalTransactionError,
            ConfigConflictError):
        raise
    except KafkaEdgeError as exc:
        raise BrokerUnavailable(f"{what} failed: {exc}; stopping (exit 75): a restart "
                                "restores from the changelog") from exc


class Ownership:
    """Restore, scope and snapshot methods of `Trainer`; see the module docstring."""

    kafka: KafkaConfig
    cfg: TrainerConfig
    learner_cfg: LearnerConfig
    learner: Learner
    device: torch.device
    metrics: TrainerMetrics
    topics: TopicNames
    stop: threading.Event
    watchdog: Heartbeat
    ready: bool
    _own_writes: OwnWrites  # whether a rebalance must restore
    _own_tombstones: OwnTombstones  # what an abort's restore may keep
    _volatile: dict[str, Any] | None  # volatile_state() at the last commit
    _own_users: set[str] | None  # see _scope
    _input_partitions: dict[str, int]  # input topics' partition counts, for batch.misrouted
    _snapshots: Snapshots | None
    _snapshot_at: float
    _unsnapshotted: bool  # a commit since the last snapshot was taken
    _erasures: int  # committed forgets and distrusting restores, for `_snapshot`

    def _client_id(self, role: str) -> str:
        return f"{self.cfg.transactional_id}-{role}"

    def _beat_or_stop(self, step: str = "restore") -> None:
        """Between a restore's chunks and a rebalance's settle waits: a stop ends them here."""
        self.watchdog.beat(step)
        if self.stop.is_set():
            raise RestoreStopped

    def _restore(self, reason: str = "start", *, settle: bool = True) -> bool:
        """Rebuild the learner from the snapshot and the changelog, and put back the state
        rows do not carry as of our last commit; True if all of it went back (see
        `Learner.load_volatile_state`). `settle`: first wait (up to MARKERS_WAIT_S) for
        pending transactions, so the ends it records count their markers; pointless
        while other trainers commit all the time, since their rows make us restore
        again anyway. Not ready meanwhile (/readyz, `stream_app_trainer_ready`), whatever
        the reason: an abort's restore, as long as a start's, read as ready."""
        was, self.ready = self.ready, False
        try:
            return self._rebuild(reason, settle=settle)
        finally:
            self.ready = was

    def _rebuild(self, reason: str, *, settle: bool) -> bool:
        started = time.monotonic()
        self.metrics.restores.labels(reason=reason).inc()
        self._own_writes.forget()  # until this restore completes
        self.learner = Learner(self.learner_cfg, device=self.device)
        tag = self._snapshots.load_into(self.learner) if self._snapshots else None
        if tag is None and self._snapshots is not None:
            self.learner = Learner(self.learner_cfg, device=self.device)  # a failed load may
            # have filled part of it
        forgets_in_file = None if tag is None else self.learner.forget_requests
        with transient(f"the restore ({reason})"):
            stats = restore(self.learner, self.kafka, client_id=self._client_id("restore"),
                            on_chunk=self._beat_or_stop,
                            start=None if tag is None else tag.ends,
                            settle_s=MARKERS_WAIT_S if settle else 0.0,
                            instance_id=self.cfg.instance_id)
        kept_all = False
        # The snapshot file may hold erased users: others' rows distrusted, or forgets
        # committed after it was written (a stop before it was written again).
        if self.learner.distrusted() or forgets_in_file not in (None,
                                                                self.learner.forget_requests):
            self._erasures += 1
        if self._volatile is not None:  # this process committed: its own state is exact
            kept_all = self.learner.load_volatile_state(
                self._volatile, own_tombstones=self._own_tombstones.users())
        self._own_writes.restored(stats.ends)
        self.metrics.restore_snapshot_age.set(
            -1 if tag is None else time.time() - tag.written_ms / 1000)
        self.metrics.restore_seconds.set(time.monotonic() - started)
        sizes = self.learner.table_sizes()  # not the records applied: a key read in two
        self.metrics.restored_rows.labels(table="user").set(sizes["users"])  # chunks is one row
        self.metrics.restored_rows.labels(table="item").set(sizes["items"])
        report_table_rows(self.metrics, sizes)  # before any commit
        return kept_all

    def _on_assign(self, consumer: GroupConsumer | None, parts: list[Partition]) -> None:
        """Reload the changelog before the first record of newly owned partitions.

        Their previous owner (another trainer, or this one before a rebalance)
        may have published rows of their users since our last restore, and
        learning on stale rows would publish them over its work. Runs inside
        the rebalance callback, so no record of `parts` has been fetched yet;
        and every batch of ours is committed before we poll again, so the
        changelog also holds everything this trainer did. Skipped when the
        changelog provably holds nothing but our last restore and our own
        commits since (`OwnWrites`: a lone trainer's start, or its
        partitions coming back after a rebalance), while we published every
        user: the learner then equals what a restore would give.
        The end is read once the partitions' committed offsets are stable: a
        previous owner dropped from the group with a transaction still open
        would otherwise have its last rows missing from our restore while its
        offsets still commit, and we would publish stale rows over them.
        """
        self._own_tombstones.reassigned()  # others may have written our users' rows meanwhile
        if not parts or consumer is None:
            return
        if self.stop.is_set():
            # Nothing will read them: the loop takes no batch once stopped, and their
            # offsets stay as they are (one met while closing: `GroupConsumer.close`).
            log.info("partitions=%s assigned while stopping: left unread", parts)
            return
        # One metadata request answers both whether we own every input partition and what
        # `batch.misrouted` checks against (partitions added since show here).
        self._input_partitions = self._input_counts(consumer)
        # Checked at start too; partitions added to one input topic while trainers run
        # made the range assignor split a user's clicks and purchases between two of
        # them, each publishing the user's row over the other's. Stop (exit 2) instead.
        check_co_partitioned(self._input_partitions)
        whole = consumer.owns_all(self._input_partitions)  # asked first: a long restore
        # makes the consumer look too long without a poll, and the answer False
        if self.cfg.restore:
            # A previous owner's open transaction ends first: committed, or aborted by
            # the broker after transaction.timeout.ms (which -X may raise past 60 s).
            with transient("reading the changelog's ends after a rebalance"):
                consumer.settle(parts, timeout_s=max(60.0, self._txn_timeout_s() + 30.0),
                                on_wait=lambda: self._beat_or_stop("settle"))
                ends = consumer.ends_and_stable(self.topics.embeddings)
            if not self._own_writes.keeps_learner(*ends):
                log.info("partitions=%s newly assigned and the changelog is not ours alone "
                         "since the last restore: restoring", parts)
                self._restore("rebalance", settle=whole)
            else:
                log.info("partitions=%s newly assigned; the changelog holds only our own "
                         "commits since the last restore: keeping the learner", parts)
        self._scope(whole)

    def _scope(self, whole: bool) -> None:
        """While other trainers own some input partitions, publish only our own users.

        A restore loads every user, and a snapshot's replay buffer holds every
        user's events (it was written while we owned all partitions). Through
        them a step changes users of other trainers: replaying their events,
        evicting their rows, dropping an evicted item from their histories.
        Those rows are the other trainers' to publish; ours are stale copies
        (tests/reliability/test_two_trainers.py). So on a partial assignment
        the replay buffer starts empty, and the users published are those with
        an event or a forget on our partitions since (`_own_users`). A user of
        ours whose row is evicted before their next event keeps it in the
        changelog. A user leaves the set when their tombstone commits; one who
        never got a row (every event a duplicate or dead-lettered, or still
        waiting for admission) stays until the next assignment.
        """
        if whole:
            self._own_users = None
            return
        log.info("other trainers own some partitions: publishing only our users' rows")
        self._own_users = set()
        self.learner.clear_replay()
        self._own_writes.forget()  # the replay buffer is no longer what a restore gives
        if self._volatile is not None:  # what an abort goes back to, the replay buffer
            self._volatile = self.learner.volatile_state()  # too: no batch since a commit

    def _owns_every_input(self, consumer: GroupConsumer) -> bool:
        """False, with a warning, when the partition counts cannot be read (asked once):
        only the snapshot is skipped. Through `_input_counts` a stop during a broker outage
        took three 10 s metadata waits, then exited 75, not 0."""
        self.watchdog.beat("partition counts")
        try:
            counts = consumer.partition_counts([self.topics.clicks, self.topics.purchases])
        except KafkaEdgeError as exc:
            log.warning("snapshot skipped: cannot read the input topics' partition counts "
                        "(%s)", exc)
            return False
        return consumer.owns_all(counts)

    def _input_counts(self, consumer: GroupConsumer) -> dict[str, int]:
        """The input topics' partition counts, asked up to 3 times. Unreadable, they stop the
        trainer (`transient`, exit 75): read as "not every partition is ours", they kept a
        lone trainer in the shared scope (no snapshots, no replay buffer) until the next
        rebalance, days away."""
        topics = [self.topics.clicks, self.topics.purchases]
        for _ in range(2):
            self.watchdog.beat("partition counts")
            try:
                return consumer.partition_counts(topics)
            except KafkaEdgeError as exc:
                log.warning("cannot read the input topics' partition counts (%s): asking again",
                            exc)
        self.watchdog.beat("partition counts")
        with transient("reading the input topics' partition counts"):
            return consumer.partition_counts(topics)

    def _txn_timeout_s(self) -> float:
        return ms_setting(self.kafka, "transaction.timeout.ms",
                          TRANSACTIONAL_DEFAULTS["transaction.timeout.ms"]) / 1000

    def _snapshot(self, consumer: GroupConsumer, *, stopping: bool = False) -> None:
        """Write the local snapshot when due (every interval while commits came since the
        last one, also when idle, so a crash after the last batch re-applies nothing the
        dedup window saw; and when `stopping`, waiting for the write), and only while we
        own every input partition.

        Called between transactions, so the learner holds everything it
        published; owning all inputs means no other trainer of the group
        publishes rows meanwhile. The tag is the changelog's end only once
        that end is provably our last restore plus our own commits
        (`OwnWrites.proven_ends`): a restore from the snapshot reads only what follows
        the tag, so a row someone else wrote before it would be lost. A failed
        write costs only restore speed: logged, not fatal.
        A file older than an erasure (`_erasures`: a committed forget, a restore
        that distrusted users) may hold the erased users' events: it is due at
        once, at every turn until a write of it lands, and deleted when none can
        be written (no proven ends, or the last write failed).
        """
        if self._snapshots is None:
            return
        erased = self._snapshots.erasures < self._erasures
        changed = self._unsnapshotted or self._snapshots.write_failed
        due = erased or (changed and time.monotonic() - self._snapshot_at
                         >= self.cfg.snapshot_interval_s)
        if not (due or stopping) or (self._snapshots.busy() and not stopping):
            return  # (a write still running: `write` would skip, after the broker's answers)
        self._snapshot_at = time.monotonic()  # due again one interval on, written or not
        ends = self._snapshot_ends(consumer, stopping=stopping)
        if erased and (ends is None or self._snapshots.write_failed):
            self._discard_erased(self._snapshots)
            return
        if ends is not None and self._snapshots.write(self.learner, ends=ends, wait=stopping,
                                                      erasures=self._erasures):
            self._unsnapshotted = False
        if erased and stopping and self._snapshots.write_failed:  # no later turn to do it
            self._discard_erased(self._snapshots)

    def _discard_erased(self, snapshots: Snapshots) -> None:
        snapshots.discard("users were erased since it was written, and none without them "
                          "can be written now", self._erasures)

    def _snapshot_ends(self, consumer: GroupConsumer, *, stopping: bool) -> dict[int, int] | None:
        """The changelog's end offsets a snapshot of the learner now may be tagged with;
        None (said why, once) when the learner is not what they lead to."""
        # In partial scope (`_scope`) the learner differs from the changelog by rows
        # other trainers publish: only a full-scope learner is a snapshot of it.
        if self._own_users is not None or not self._owns_every_input(consumer):
            return None
        if self._own_writes.foreign:  # said once (below); no snapshot until a restore
            return None
        self.watchdog.beat("snapshot")

        def pause(seconds: float) -> bool:  # a stop cuts the wait short, unless it is the stop's
            if stopping:
                time.sleep(seconds)
                return True
            return not self.stop.wait(seconds)

        try:
            ends = self._own_writes.proven_ends(
                lambda: consumer.ends_and_stable(self.topics.embeddings), pause=pause)
        except KafkaEdgeError as exc:
            log.warning("snapshot skipped: %s", exc)
            return None
        if ends is None:
            log.warning("snapshot skipped (the warning before says why); while the changelog "
                        "holds rows of another writer, snapshots resume after the next restore")
        return ends
