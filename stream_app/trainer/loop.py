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

from stream_app.codec import DLQ_RECORD_MAX, MESSAGE_MAX_BYTES, BugRun, DlqReason
from stream_app.config import KafkaConfig
from stream_app.core import Learner, LearnerConfig
from stream_app.device import resolve_device
from stream_app.kafka.admin import require_topics
from stream_app.kafka.client_logs import Repeats
from stream_app.kafka.clients import (
    MAX_POLL_INTERVAL_MS,
    REPORT_EOF,
    TRANSACTIONAL_DEFAULTS,
    check_consumer_settings,
    check_message_room,
    check_producer_settings,
    ms_setting,
)
from stream_app.kafka.consumer import GroupConsumer
from stream_app.kafka.first_fetch import log_never_fetched
from stream_app.kafka.records import RawRecord, first_offsets, next_offsets
from stream_app.kafka.transaction import STEP_TIMEOUT_S, TransactionalPublisher, TxnOutcome
from stream_app.observability.metrics import TrainerMetrics
from stream_app.trainer.batch import (
    Decoded,
    decode_batch,
    forget_request,
    leave_scope,
    misrouted,
    order_key,
    output_records,
    own_users_only,
    tombstones_to_publish,
)
from stream_app.trainer.batch_cap import next_batch_cap
from stream_app.trainer.config import TrainerConfig, check_with_client, check_with_learner
from stream_app.trainer.observe import observe_commit, report_lag, report_misrouted
from stream_app.trainer.own_writes import OwnTombstones, OwnWrites
from stream_app.trainer.ownership import Ownership, RestoreStopped
from stream_app.trainer.result import BatchResult, ProgressLine, batch_result
from stream_app.trainer.snapshot import Snapshots
from stream_app.trainer.steps import CountedRequests, learn_batch
from stream_app.watchdog import EXIT_STALLED, NO_WATCHDOG, Heartbeat

log = logging.getLogger(__name__)

ABORT_BACKOFF_CAP_S = 30.0
PROGRESS_LOG_S = 60.0
DECODER_ERRORS_MAX = 1_000
ROW_RECORD_MAX = MESSAGE_MAX_BYTES + 4096
"""The largest embeddings record: a row the schema allows, its key (at most 1 KiB) and
the batch's framing."""
"""Records in a row whose decoding raised an unexpected error (`decoder_error`) after
which the trainer stops rather than dead-letter more: one is a record that meets a bug,
a run of them a broken build, which would drain the input into the DLQ, forget requests
included, with its offsets committed."""
"""How often a trainer at INFO says what it committed (`ProgressLine`)."""
"""Longest pause between two tries of a batch whose transaction keeps aborting."""


def check_settings(kafka: KafkaConfig, cfg: TrainerConfig, learner_cfg: LearnerConfig) -> None:
    """Refuse (ConfigError) what the trainer cannot run with, before the metrics server and
    the broker checks: with no broker a conflicting -X setting exited 75, "try again".
    The demo runs it for the trainer it starts, before its broker and topics."""
    check_with_learner(cfg, learner_cfg)
    check_with_client(cfg, kafka.client)
    check_consumer_settings(kafka, "check", cfg.group_id, enforce=REPORT_EOF)
    check_producer_settings(kafka, "check", transactional_id=cfg.transactional_id)
    check_message_room(kafka, max(ROW_RECORD_MAX, DLQ_RECORD_MAX),
                       "an embeddings row or a dead letter")
    for key, default in (("transaction.timeout.ms",
                          TRANSACTIONAL_DEFAULTS["transaction.timeout.ms"]),
                         ("max.poll.interval.ms", MAX_POLL_INTERVAL_MS)):
        ms_setting(kafka, key, default)  # values our own timing reads: refused here too


class Trainer(Ownership):
    """Wiring of Kafka edges and the learning core; see the module docstring. Restores,
    scope and snapshots are `Ownership`'s (`trainer.ownership`)."""

    def __init__(self, kafka: KafkaConfig, cfg: TrainerConfig, learner_cfg: LearnerConfig, *,
                 metrics: TrainerMetrics, stop: threading.Event | None = None,
                 on_batch: Callable[[BatchResult], None] | None = None,
                 watchdog: Heartbeat = NO_WATCHDOG) -> None:
        check_settings(kafka, cfg, learner_cfg)
        if cfg.stall_timeout_s <= STEP_TIMEOUT_S:
            log.warning("trainer.stall_timeout_s=%g is not over the %g s a transaction step "
                        "waits for the broker: a broker away that long (a leader election) "
                        "restarts the trainer (exit 75) instead of aborting and retrying the "
                        "batch", cfg.stall_timeout_s, STEP_TIMEOUT_S)
        self.kafka, self.cfg, self.learner_cfg = kafka, cfg, learner_cfg
        self.watchdog = watchdog
        self.topics = kafka.topics
        self.metrics = metrics
        self.stop = stop or threading.Event()
        self.on_batch = on_batch
        self.device = resolve_device(cfg.device, "trainer.device")
        self.learner = Learner(learner_cfg, device=self.device)
        self.ready = False
        metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)  # as /readyz, scraped
        self._own_writes = OwnWrites(kafka.client)  # whether a rebalance must restore
        self._own_tombstones = OwnTombstones()  # what an abort's restore may keep
        self._volatile: dict[str, Any] | None = None  # volatile_state() at the last commit
        self._own_users: set[str] | None = None  # see _scope
        self._input_partitions: dict[str, int] = {}  # counts at the last assignment
        self._forgets_counted = CountedRequests()
        self._misrouted_said = Repeats()
        self._aborts_in_a_row = 0
        self._decoder_bugs = BugRun(DECODER_ERRORS_MAX, "records", "decoder_error")
        self._progress = ProgressLine(every_s=PROGRESS_LOG_S, started=time.monotonic())
        self._batch_cap = cfg.batch_max  # lowered while batches near max.poll.interval.ms
        self._outcome_at = 0.0  # when the last batch's transaction committed or aborted
        self._txn_seconds = 0.0  # how long that transaction took
        self._snapshot_at = time.monotonic()
        self._unsnapshotted = False  # a commit since the last snapshot was taken
        self._erasures = 0  # committed forgets and distrusting restores (`_snapshot`)
        self._snapshots = None if cfg.snapshot_dir is None else Snapshots(
            kafka, folder=cfg.snapshot_dir, transactional_id=cfg.transactional_id,
            max_age_s=cfg.snapshot_max_age_s,
            on_written=lambda: metrics.snapshot_written.set(time.time()))
        metrics.snapshot_interval.set(0 if self._snapshots is None else cfg.snapshot_interval_s)

    def run(self) -> int:
        """Run until stopped (SIGTERM/SIGINT/SIGHUP set `stop`) or idle too long: 0; or until a
        partition is assigned but never fetched: EXIT_STALLED (see `_loop`)."""
        # Co-partitioning (one trainer owns partition i of both event topics, so
        # a user's clicks and purchases) needs equal partition counts.
        inputs = [self.topics.clicks, self.topics.purchases]
        kept = require_topics(self.kafka, [*inputs, self.topics.embeddings, self.topics.dlq],
                              co_partitioned=inputs, compacted=[self.topics.embeddings],
                              record_room={self.topics.dlq: DLQ_RECORD_MAX})
        if self._snapshots is not None and self.topics.embeddings in kept:
            self._snapshots.cap_age(kept[self.topics.embeddings])
        # Step 0. init_transactions fences a zombie and aborts its open
        # transaction before we read the changelog, so restore sees only
        # committed rows that match the committed input offsets.
        publisher = TransactionalPublisher(self.kafka, transactional_id=self.cfg.transactional_id,
                                           client_id=self._client_id("producer"))
        consumer: GroupConsumer | None = None
        try:
            if self.cfg.restore:
                self._restore()
                if self.stop.is_set():  # during its last chunk: do not join the group
                    raise RestoreStopped
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
        except RestoreStopped:
            log.info("stopped during a restore: nothing to commit, no snapshot")
            status = 0
        finally:
            self.ready = False
            if consumer is not None:
                consumer.close()
            publisher.close()
        log.info("trainer stopped (status %d)", status)
        return status

    def _order_key(self, rec: RawRecord) -> int:
        """The consumer hands out partitions' records in this order (`order_key`)."""
        return order_key(rec, int(time.time() * 1000), self.cfg.max_future_ms)

    def _loop(self, consumer: GroupConsumer, publisher: TransactionalPublisher) -> int:
        """Until stopped or idle (0), or until a partition is assigned but never fetched
        (EXIT_STALLED: librdkafka#5586, see `kafka.first_fetch`)."""
        idle_since = time.monotonic()
        while not self.stop.is_set():
            self.watchdog.beat("poll")
            batch = consumer.poll_batch(self._batch_cap, self.cfg.batch_wait_ms / 1000)
            if self.stop.is_set():  # during the poll: a partition it assigned is not
                break  # restored (`_on_assign`), so its records must not be learned
            polled = time.monotonic()
            report_lag(self.metrics, consumer.lag())
            self.watchdog.beat("first-fetch check")  # it may ask the broker (up to 5 s)
            stuck = consumer.stuck(self.cfg.stall_timeout_s)
            if stuck:
                log_never_fetched(stuck, self.cfg.stall_timeout_s, "trainer")
                return EXIT_STALLED
            if not consumer.assignment or consumer.queued():
                # Idle counts from the first assignment, and not while records wait
                # in the consumer (held for event-time order or a barrier's partner).
                idle_since = time.monotonic()
            if not batch:
                idle = time.monotonic() - idle_since
                if self.cfg.exit_when_idle is not None and idle >= self.cfg.exit_when_idle:
                    log.info("no input for %.1fs: exiting (exit_when_idle)", idle)
                    return 0
                self._snapshot(consumer)  # the last batches' changes, once due
                publisher.serve()
                continue
            idle_since = time.monotonic()
            result = self.process(batch, consumer, publisher)
            self._resize(len(batch), self._outcome_at - polled, consumer.max_poll_interval_s)
            line = self._progress.add(result, now=time.monotonic())
            if line is not None:
                log.info("%s", line)
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
        self._count_decoder_errors(decoded, batch)
        ch = learn_batch(self.learner, decoded, step_max=self.cfg.step_max, now_ms=now_ms,
                         metrics=self.metrics, on_step=lambda: self.watchdog.beat("learn"),
                         counted=self._forgets_counted)
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
        self.watchdog.beat("transaction")
        outcome = publisher.commit(consumer, records, next_offsets(batch), first_offsets(batch),
                                   spot_topic=self.topics.embeddings)
        published_ms = int(time.time() * 1000)
        self._outcome_at = time.monotonic()
        self._txn_seconds = self._outcome_at - txn_start
        self.metrics.transaction_seconds.observe(self._txn_seconds)
        # Not the abort's back-off and restore below (restore_seconds): they put minutes
        # of recovery in the batch panel's p99.
        self.metrics.batch_seconds.observe(self._outcome_at - started)
        if outcome is TxnOutcome.ABORTED:
            # The learner already moved; the batch will be read again, so go back
            # to exactly the committed state (the changelog) to apply it once.
            self.metrics.transaction_aborts.inc()
            self._back_off_after_abort()
            self.watchdog.beat("restore after abort")
            kept_all = self._restore("abort", settle=self._own_users is None)
            if self._own_users is not None:  # the assignment is unchanged: so is the scope.
                if not kept_all:  # The kept replay is of our users (`_scope`); without
                    self.learner.clear_replay()  # it a snapshot's may have been loaded
                self._own_writes.forget()  # as in `_scope`: no longer what a restore gives
        else:
            self._aborts_in_a_row = 0
            self._unsnapshotted = True
            self.metrics.last_commit.set(time.time())
            self._volatile = self.learner.volatile_state()  # what an abort goes back to
            self._own_tombstones.committed(tombstones, published_users=(
                i for block in blocks if block.entity == "user" for i in block.ids))
            if self._own_users is None:
                self._own_writes.committed(
                    (r.key for r in records if r.topic == self.topics.embeddings),
                    publisher.spot)
            else:  # other users' rows changed here unpublished (evictions, histories)
                self._own_writes.forget()
                leave_scope(self._own_users, tombstones)
            self._forgets_counted.add(ch.counts.forget_requests)
            if decoded.forgets:  # either half: the snapshot file holds the user's events
                self._erasures += 1
            observe_commit(self.metrics, ch.counts, batch, decoded, blocks, ch.dlq,
                           published_ms, self.learner.table_sizes(), ch.evals)
            report_misrouted(self.metrics, misrouted(decoded, self._input_partitions),
                             self._input_partitions, self._misrouted_said)
        return batch_result(batch, decoded, ch.evals, applied=ch.applied,
                            losses=ch.counts.losses, dlq=len(ch.dlq),
                            rows=sum(len(b) for b in blocks), outcome=outcome,
                            published_ms=published_ms)

    def _count_decoder_errors(self, decoded: Decoded, batch: list[RawRecord]) -> None:
        """Stop, before anything commits, at DECODER_ERRORS_MAX in a row."""
        bugs = {(d.source_topic, d.partition, d.offset) for d in decoded.dlq
                if d.reason == DlqReason.DECODER_ERROR}
        if not bugs:  # the usual batch: the run ends, without a walk over its records
            self._decoder_bugs.count((False,))
            return
        self._decoder_bugs.count((rec.topic, rec.partition, rec.offset) in bugs
                                 for rec in batch)

    def _resize(self, taken: int, seconds: float, max_poll_interval_s: float) -> None:
        """Take fewer records a poll while batches near max.poll.interval.ms (`batch_cap`)."""
        txn_timeout_s = self._txn_timeout_s()
        cap = next_batch_cap(self._batch_cap, configured=self.cfg.batch_max, taken=taken,
                             seconds=seconds, max_poll_interval_s=max_poll_interval_s,
                             txn_seconds=self._txn_seconds, txn_timeout_s=txn_timeout_s)
        if cap < self._batch_cap:
            over = (f"over half of max.poll.interval.ms ({max_poll_interval_s:.0f} s)"
                    if seconds / max_poll_interval_s > self._txn_seconds / txn_timeout_s else
                    f"{self._txn_seconds:.1f} s of it in its transaction, over half of "
                    f"transaction.timeout.ms ({txn_timeout_s:.0f} s)")
            log.warning("a batch of %d records took %.1f s from its poll to its commit, %s: "
                        "taking at most %d records a poll until batches are faster "
                        "(batch_max %d)", taken, seconds, over, cap, self.cfg.batch_max)
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
        self.watchdog.beat("back-off after abort")
        self.stop.wait(delay)

    @property
    def model_version(self) -> str:
        return f"{self.cfg.instance_id}-{self.learner.global_state()['step']}"
