"""The trainer: poll → decode → evaluate → learn → publish rows + offsets atomically.

One consumer group member. Each loop iteration is one Kafka transaction, so
every event read is either applied once (its rows and its offset commit
together) or dead-lettered with a reason inside the same transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from stream_app.config import KafkaConfig
from stream_app.core import Learner, LearnerConfig
from stream_app.device import resolve_device
from stream_app.kafka.admin import require_topics
from stream_app.kafka.clients import (
    MAX_POLL_INTERVAL_MS,
    REPORT_EOF,
    TRANSACTIONAL_DEFAULTS,
    consumer_config,
    ms_setting,
    producer_config,
)
from stream_app.kafka.consumer import GroupConsumer
from stream_app.kafka.exceptions import KafkaEdgeError
from stream_app.kafka.first_fetch import log_never_fetched
from stream_app.kafka.records import Partition, RawRecord, first_offsets, next_offsets
from stream_app.kafka.transaction import TransactionalPublisher, TxnOutcome
from stream_app.observability.metrics import TrainerMetrics
from stream_app.trainer.batch import (
    decode_batch,
    forget_request,
    leave_scope,
    order_key,
    output_records,
    own_users_only,
    tombstones_to_publish,
)
from stream_app.trainer.batch_cap import next_batch_cap
from stream_app.trainer.config import TrainerConfig, check_with_client, check_with_learner
from stream_app.trainer.observe import observe_commit, report_lag, report_table_rows
from stream_app.trainer.own_writes import MARKERS_WAIT_S, OwnWrites
from stream_app.trainer.restore import restore
from stream_app.trainer.result import BatchResult, batch_result
from stream_app.trainer.snapshot import Snapshots
from stream_app.trainer.steps import learn_batch
from stream_app.trainer.watchdog import EXIT_STALLED, Watchdog

log = logging.getLogger(__name__)

ABORT_BACKOFF_CAP_S = 30.0
"""Longest pause between two tries of a batch whose transaction keeps aborting."""

class Trainer:
    """Wiring of Kafka edges and the learning core; see the module docstring."""

    def __init__(self, kafka: KafkaConfig, cfg: TrainerConfig, learner_cfg: LearnerConfig, *,
                 metrics: TrainerMetrics, stop: threading.Event | None = None,
                 on_batch: Callable[[BatchResult], None] | None = None,
                 watchdog: Watchdog | None = None) -> None:
        check_with_learner(cfg, learner_cfg)
        check_with_client(cfg, kafka.client)
        # A -X setting that conflicts with an enforced one fails here, before the metrics
        # server and the broker checks (with no broker it exited 75, "try again").
        consumer_config(kafka, "check", cfg.group_id, enforce=REPORT_EOF)
        producer_config(kafka, "check", transactional_id=cfg.transactional_id)
        for key, default in (("transaction.timeout.ms",
                              TRANSACTIONAL_DEFAULTS["transaction.timeout.ms"]),
                             ("max.poll.interval.ms", MAX_POLL_INTERVAL_MS)):
            ms_setting(kafka, key, default)  # values our own timing reads: refused here too
        self.kafka, self.cfg, self.learner_cfg = kafka, cfg, learner_cfg
        self.watchdog = watchdog
        self.topics = kafka.topics
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.on_batch = on_batch
        self.device = resolve_device(cfg.device, "trainer.device")
        self.learner = Learner(learner_cfg, device=self.device)
        self.ready = False
        self._own_writes = OwnWrites(kafka.client)  # whether a rebalance must restore
        self._volatile: dict[str, Any] | None = None  # volatile_state() at the last commit
        self._own_users: set[str] | None = None  # see _scope
        self._aborts_in_a_row = 0
        self._batch_cap = cfg.batch_max  # lowered while batches near max.poll.interval.ms
        self._outcome_at = 0.0  # when the last batch's transaction committed or aborted
        self._snapshot_at = time.monotonic()
        self._unsnapshotted = False  # a commit since the last snapshot was taken
        self._snapshots = None if cfg.snapshot_dir is None else Snapshots(
            kafka, folder=cfg.snapshot_dir, transactional_id=cfg.transactional_id,
            max_age_s=cfg.snapshot_max_age_s,
            on_written=lambda: metrics.snapshot_written.set(time.time()))
        metrics.snapshot_interval.set(0 if self._snapshots is None else cfg.snapshot_interval_s)

    def _client_id(self, role: str) -> str:
        return f"{self.cfg.transactional_id}-{role}"

    def _beat(self, step: str) -> None:
        if self.watchdog is not None:
            self.watchdog.beat(step)

    def _restore(self, reason: str = "start", *, settle: bool = True) -> None:
        """Rebuild the learner from the snapshot and the changelog. `settle`: first wait
        (up to MARKERS_WAIT_S) for pending transactions, so the ends it records count
        their markers; pointless while other trainers commit all the time, since their
        rows make us restore again anyway."""
        started = time.monotonic()
        self.metrics.restores.labels(reason=reason).inc()
        self._own_writes.forget()  # until this restore completes
        self.learner = Learner(self.learner_cfg, device=self.device)
        tag = self._snapshots.load_into(self.learner) if self._snapshots else None
        if tag is None and self._snapshots is not None:
            self.learner = Learner(self.learner_cfg, device=self.device)  # a failed load may
            # have filled part of it
        stats = restore(self.learner, self.kafka, client_id=self._client_id("restore"),
                        on_chunk=lambda: self._beat("restore"),
                        start=None if tag is None else tag.ends,
                        settle_s=MARKERS_WAIT_S if settle else 0.0)
        if self._volatile is not None:  # this process committed: its own state is exact
            self.learner.load_volatile_state(self._volatile)
        self._own_writes.restored(stats.ends)
        self.metrics.restore_snapshot_age.set(
            -1 if tag is None else time.time() - tag.written_ms / 1000)
        self.metrics.restore_seconds.set(time.monotonic() - started)
        sizes = self.learner.table_sizes()  # not the records applied: a key read in two
        self.metrics.restored_rows.labels(table="user").set(sizes["users"])  # chunks is one row
        self.metrics.restored_rows.labels(table="item").set(sizes["items"])
        report_table_rows(self.metrics, sizes)  # before any commit

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
        """
        due = (self._unsnapshotted
               and time.monotonic() - self._snapshot_at >= self.cfg.snapshot_interval_s)
        if self._snapshots is None or not (due or stopping):
            return
        self._snapshot_at = time.monotonic()  # due again one interval on, written or not
        # In partial scope (`_scope`) the learner differs from the changelog by rows
        # other trainers publish: only a full-scope learner is a snapshot of it.
        if self._own_users is not None or not self._owns_every_input(consumer):
            return
        self._beat("snapshot")

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
            return
        if ends is None:
            log.warning("snapshot skipped (the warning before says why); while the changelog "
                        "holds rows of another writer, snapshots resume after the next restore")
            return
        if self._snapshots.write(self.learner, ends=ends, wait=stopping):
            self._unsnapshotted = False

    def run(self) -> int:
        """Run until stopped (SIGTERM/SIGINT/SIGHUP set `stop`) or idle too long: 0; or until a
        partition is assigned but never fetched: EXIT_STALLED (see `_loop`)."""
        # Co-partitioning (one trainer owns partition i of both event topics, so
        # a user's clicks and purchases) needs equal partition counts.
        inputs = [self.topics.clicks, self.topics.purchases]
        require_topics(self.kafka, [*inputs, self.topics.embeddings, self.topics.dlq],
                       co_partitioned=inputs, compacted=[self.topics.embeddings])
        # Step 0. init_transactions fences a zombie and aborts its open
        # transaction before we read the changelog, so restore sees only
        # committed rows that match the committed input offsets.
        publisher = TransactionalPublisher(self.kafka, transactional_id=self.cfg.transactional_id,
                                           client_id=self._client_id("producer"))
        consumer: GroupConsumer | None = None
        try:
            if self.cfg.restore:
                self._restore()
            consumer = GroupConsumer(self.kafka, client_id=self._client_id("consumer"),
                                     group_id=self.cfg.group_id,
                                     topics=[self.topics.clicks, self.topics.purchases],
                                     on_assign=lambda parts: self._on_assign(consumer, parts),
                                     on_revoke=self.metrics.forget_partitions,
                                     co_partitioned=True, event_time=self._order_key,
                                     barrier=forget_request)
            self.ready = True
            status = self._loop(consumer, publisher)
            self._snapshot(consumer, stopping=True)  # the next start reads only what follows
        finally:
            self.ready = False
            if consumer is not None:
                consumer.close()
            publisher.close()
        return status

    def _order_key(self, rec: RawRecord) -> int:
        """The consumer hands out partitions' records in this order (`order_key`)."""
        return order_key(rec, latest_ms=int(time.time() * 1000) + self.cfg.max_future_ms)

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
        if not parts or consumer is None:
            return
        whole = self._owns_every_input(consumer)  # asked first: a long restore makes the
        # consumer look too long without a poll, and the answer False
        if self.cfg.restore:
            # A previous owner's open transaction ends first: committed, or aborted by
            # the broker after transaction.timeout.ms (which -X may raise past 60 s).
            consumer.settle(parts, timeout_s=max(60.0, self._txn_timeout_s() + 30.0),
                            on_wait=lambda: self._beat("settle"))
            if not self._own_writes.keeps_learner(
                    *consumer.ends_and_stable(self.topics.embeddings)):
                was, self.ready = self.ready, False  # /readyz says "restoring" meanwhile
                log.info("partitions=%s newly assigned and the changelog is not ours alone "
                         "since the last restore: restoring", parts)
                try:
                    self._restore("rebalance", settle=whole)
                finally:
                    self.ready = was
            else:
                log.info("partitions=%s newly assigned; the changelog holds only our own "
                         "commits since the last restore: keeping the learner", parts)
        self._scope(whole)

    def _txn_timeout_s(self) -> float:
        return ms_setting(self.kafka, "transaction.timeout.ms",
                          TRANSACTIONAL_DEFAULTS["transaction.timeout.ms"]) / 1000

    def _owns_every_input(self, consumer: GroupConsumer) -> bool:
        try:
            return consumer.owns_all([self.topics.clicks, self.topics.purchases])
        except KafkaEdgeError as exc:
            log.warning("cannot tell whether we own every partition (%s): assuming not", exc)
            return False

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

    def _loop(self, consumer: GroupConsumer, publisher: TransactionalPublisher) -> int:
        """Until stopped or idle (0), or until a partition is assigned but never fetched
        (EXIT_STALLED: librdkafka#5586, see `kafka.first_fetch`)."""
        idle_since = time.monotonic()
        while not self.stop.is_set():
            self._beat("poll")
            batch = consumer.poll_batch(self._batch_cap, self.cfg.batch_wait_ms / 1000)
            polled = time.monotonic()
            report_lag(self.metrics, consumer.lag())
            self._beat("first-fetch check")  # it may ask the broker (up to 5 s)
            stuck = consumer.stuck(self.cfg.stall_timeout_s)
            if stuck:
                log_never_fetched(stuck, self.cfg.stall_timeout_s, "trainer")
                return EXIT_STALLED
            if not consumer.assignment:
                idle_since = time.monotonic()  # idle counts from the first assignment
            if not batch:
                idle = time.monotonic() - idle_since
                if self.cfg.exit_when_idle is not None and idle >= self.cfg.exit_when_idle:
                    log.info("no input for %.1fs: exiting (exit_when_idle)", idle)
                    return 0
                self._snapshot(consumer)  # the last batches' changes, once due
                continue
            idle_since = time.monotonic()
            result = self.process(batch, consumer, publisher)
            self._resize(len(batch), self._outcome_at - polled, consumer.max_poll_interval_s)
            if self.on_batch is not None:
                self.on_batch(result)
            if result.outcome is not TxnOutcome.ABORTED:
                self._snapshot(consumer)
        return 0

    def process(self, batch: list[RawRecord], consumer: GroupConsumer,
                publisher: TransactionalPublisher) -> BatchResult:
        """One transaction: learn from `batch` and publish what changed with its offsets."""
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        decoded = decode_batch(batch, self.topics, now_ms=now_ms,
                               max_future_ms=self.cfg.max_future_ms)
        ch = learn_batch(self.learner, decoded, step_max=self.cfg.step_max, now_ms=now_ms,
                         metrics=self.metrics, on_step=lambda: self._beat("learn"))
        tombstones = ch.tombstones
        if self._own_users is not None:
            self._own_users |= decoded.users()
            tombstones = own_users_only(self._own_users, ch.users, tombstones)
        tombstones = tombstones_to_publish(tombstones, users=ch.users, items=ch.items)
        blocks = self.learner.row_blocks(user_ids=sorted(ch.users), item_ids=sorted(ch.items),
                                         model_version=self.model_version, now_ms=now_ms)
        lc = self.learner_cfg
        meta = {**self.learner.global_state(), "model_version": self.model_version,
                "updated_at": now_ms,
                # How a user's serving vector mixes in recent items, so the scorer
                # can rebuild it from the current item vectors (see serving.topk).
                "serving": {"history_weight": lc.history_weight,
                            "recent_decay": lc.recent_decay,
                            "recent_items": lc.recent_items}}
        records = output_records(self.topics, blocks, tombstones, meta, ch.dlq)
        txn_start = time.monotonic()
        self._beat("transaction")
        outcome = publisher.commit(consumer, records, next_offsets(batch), first_offsets(batch),
                                   spot_topic=self.topics.embeddings)
        published_ms = int(time.time() * 1000)
        self._outcome_at = time.monotonic()
        self.metrics.transaction_seconds.observe(time.monotonic() - txn_start)
        if outcome is TxnOutcome.ABORTED:
            # The learner already moved; the batch will be read again, so go back
            # to exactly the committed state (the changelog) to apply it once.
            self.metrics.transaction_aborts.inc()
            self._back_off_after_abort()
            self._beat("restore after abort")
            self._restore("abort", settle=self._own_users is None)
            if self._own_users is not None:  # the assignment is unchanged: so is the scope,
                self.learner.clear_replay()  # but the restore may have loaded a snapshot's
        else:
            self._aborts_in_a_row = 0
            self._unsnapshotted = True
            self._volatile = self.learner.volatile_state()  # what an abort goes back to
            if self._own_users is None:
                self._own_writes.committed(
                    (r.key for r in records if r.topic == self.topics.embeddings),
                    publisher.spot)
            else:  # other users' rows changed here unpublished (evictions, histories)
                self._own_writes.forget()
                leave_scope(self._own_users, tombstones)
            observe_commit(self.metrics, ch.counts, batch, decoded, blocks, ch.dlq,
                           published_ms, self.learner.table_sizes(), ch.evals)
        self.metrics.batch_seconds.observe(time.monotonic() - started)
        return batch_result(batch, decoded, ch.evals, applied=ch.applied,
                            losses=ch.counts.losses, dlq=len(ch.dlq),
                            rows=sum(len(b) for b in blocks), outcome=outcome,
                            published_ms=published_ms)

    def _resize(self, taken: int, seconds: float, max_poll_interval_s: float) -> None:
        """Take fewer records a poll while batches near max.poll.interval.ms (`batch_cap`)."""
        cap = next_batch_cap(self._batch_cap, configured=self.cfg.batch_max, taken=taken,
                             seconds=seconds, max_poll_interval_s=max_poll_interval_s)
        if cap < self._batch_cap:
            log.warning("a batch of %d records took %.1f s from its poll to its commit, over "
                        "half of max.poll.interval.ms (%.0f s): taking at most %d records a "
                        "poll until batches are faster (batch_max %d)", taken, seconds,
                        max_poll_interval_s, cap, self.cfg.batch_max)
        elif cap > self._batch_cap:
            log.info("batches are fast again: taking at most %d records a poll (batch_max %d)",
                     cap, self.cfg.batch_max)
        self._batch_cap = cap

    def _back_off_after_abort(self) -> None:
        """Wait 0.5 s, 1 s, 2 s ... (capped) between aborts in a row.

        An abort rewinds the batch, so the next iteration tries it again at
        once; when the output cannot be written (topic unwritable, records
        refused) every try fails the same way, and without a pause the trainer
        would spin restoring and re-learning. The cap stays under the stall
        watchdog's limit; a commit resets the series; SIGTERM cuts it short.
        """
        self._aborts_in_a_row += 1
        cap = min(ABORT_BACKOFF_CAP_S, self.cfg.stall_timeout_s / 2)
        delay = min(cap, 0.5 * 2 ** (self._aborts_in_a_row - 1))
        log.warning("transaction aborted %d time(s) in a row: backing off %.1fs before "
                    "retrying the batch", self._aborts_in_a_row, delay)
        self._beat("back-off after abort")
        self.stop.wait(delay)

    @property
    def model_version(self) -> str:
        return f"{self.cfg.instance_id}-{self.learner.global_state()['step']}"
