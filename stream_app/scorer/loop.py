"""The scorer's loop: keep `embeddings` copied, answer `score-requests` on `predictions`.

Wiring only (Kafka edges <-> `stream_app.serving`). One loop thread; each turn:

1. Apply `embeddings` rows (`scorer.embeddings`): up to `load_batch` while
   loading, then slices of `LIVE_ROWS`. A scorer joins the request group once
   its load caught up, or at once if the group has no member: while other
   replicas serve it, a loading one must not take partitions from them (a
   rolling restart would answer a share of requests from a partial table for
   the whole load). A scorer that joins while loading holds requests up to
   `ready_hold_ms`, then answers them from the partial table with
   `ready: false`.
2. Read `score-requests` in the scorer group (cooperative-sticky,
   read_committed) with low-latency fetch settings. A poll returns as soon as
   one request is there, with whatever else is already fetched; that batch
   (`batch_max`, plus `batch_wait_ms` of waiting, 0 by default) is ranked with
   one top-K call and one prediction per request is produced, keyed by
   request id. Under load, requests that arrive while a batch is ranked make
   up the next batch, so batches grow with the load without a fixed wait.
   A malformed request gets an error prediction (when it carries a request
   id) and a DLQ record on `events-dlq` with its reason.
3. Commit request offsets only after everything produced for them is
   acknowledged, at most every `commit_interval_ms` (each commit is a write
   on the broker): at-least-once. After a crash or rebalance a request may be
   answered twice, so clients dedupe by request_id (`ScoreClient` does).
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry

from stream_app.codec import DLQ_RECORD_MAX, BugRun, DlqReason, copied_headers
from stream_app.config import KafkaConfig
from stream_app.heap import freeze_survivors
from stream_app.kafka.admin import AdminClient, admin_client, group_members, require_topics
from stream_app.kafka.clients import REPORT_EOF, check_consumer_settings, check_message_room
from stream_app.kafka.exceptions import KafkaEdgeError
from stream_app.kafka.first_fetch import log_never_fetched
from stream_app.kafka.records import Partition
from stream_app.kafka.reply_producer import ReplyProducer
from stream_app.kafka.request_consumer import RequestConsumer
from stream_app.kafka.tail import TailReader
from stream_app.observability import MetricsServer, ScorerMetrics
from stream_app.scorer.embeddings import EmbeddingsCopy
from stream_app.serving import EmbeddingTable, ScorerConfig, resolve_device, set_threads
from stream_app.serving.answers import (
    ANSWER_RECORD_MAX,
    BatchAnswer,
    answer_batch,
)
from stream_app.serving.batching import (
    CommitTracker,
    Pending,
    due,
    next_offsets,
    take_batch,
)
from stream_app.signals import EXIT_STALLED, stop_on_signals
from stream_app.watchdog import NO_WATCHDOG, Heartbeat, Watchdog

log = logging.getLogger(__name__)

ERROR_REASONS = (*[r.value for r in DlqReason], "bad_embedding", "delivery")
IDLE_POLL_S = 0.05
"""Longest block on an empty request topic (bounds how stale the table may get meanwhile)."""
STALL_WARN_S = 60.0
"""A `stall_timeout_s` under this is warned of (see `Scorer.__init__`)."""
BUGS_MAX = 1_000
"""Requests in a row that met a bug of ours (decoder_error, rank_error) after which the
scorer stops rather than dead-letter more: one is a request that meets a bug, a run of
them a broken build or a device gone bad (every `rank()` raising), which would answer
every request with an error, offsets committed, while /readyz said ready."""
JOIN_CHECK_S = 2.0
"""While loading, how often a scorer that has not joined the request group looks whether
the group still has members (replicas gone leave it within their session timeout)."""


def check_settings(kafka: KafkaConfig, cfg: ScorerConfig) -> None:
    """Refuse (ConfigError) -X settings the scorer cannot run with; the demo runs it for
    the scorer it starts, before its broker and topics."""
    check_consumer_settings(kafka, cfg.client_id, cfg.group_id, enforce=REPORT_EOF)
    check_message_room(kafka, ANSWER_RECORD_MAX, "an answer")


class Scorer:
    """In-process scorer: `run()` blocks until `stop` is set (or idle exit); thread-safe stop.

    `ready` is set once the initial load caught up; `metrics_port` once /metrics listens.
    `watchdog` (the process's, see `run_scorer`) is told of each turn of the loop.
    """

    def __init__(self, kafka: KafkaConfig, cfg: ScorerConfig, *,
                 registry: CollectorRegistry | None = None,
                 stop: threading.Event | None = None,
                 watchdog: Heartbeat = NO_WATCHDOG) -> None:
        self.kafka, self.cfg, self.topics = kafka, cfg, kafka.topics
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ScorerMetrics(self.registry, dlq_reasons=[r.value for r in DlqReason],
                                     error_reasons=ERROR_REASONS)
        self.stop = stop if stop is not None else threading.Event()
        self.watchdog = watchdog
        if cfg.stall_timeout_s < STALL_WARN_S:
            log.warning("scorer.stall_timeout_s=%g is under %g s: a broker outage can hold one "
                        "turn of the loop that long (metadata waits of 10 s, a revoke's flush "
                        "and commit), and the watchdog would then restart a scorer that was "
                        "riding it out", cfg.stall_timeout_s, STALL_WARN_S)
        self.table = EmbeddingTable(device=resolve_device(cfg.device, "scorer.device"),
                                    history_max=cfg.history_max)
        self.embeddings = EmbeddingsCopy(self.table, metrics=self.metrics,
                                         load_batch=cfg.load_batch, watchdog=watchdog)
        self.ready = self.embeddings.ready
        self.metrics_port: int | None = None
        self._pending: list[Pending] = []
        self._tracker = CommitTracker()
        self._bugs = BugRun(BUGS_MAX, "requests", "decoder_error or rank_error")
        self._last_input = time.monotonic()
        self._last_lag = 0.0
        self._last_commit = 0.0
        self._requests: RequestConsumer | None = None  # joined the request group
        self._join_check = 0.0  # monotonic time of the next look at the group, while loading
        self._members_seen = 0  # the group's size at the last look, logged when it changes
        self._admin: AdminClient | None = None  # for those looks; dropped once joined

    def readiness(self) -> tuple[bool, str]:
        """/readyz: ready only once the initial `embeddings` load caught up."""
        ready = self.ready.is_set()
        return ready, self.embeddings.describe(ready)

    def run(self) -> int:
        """Serve until stopped; 0 on a clean stop, 1 if a prediction could not be delivered,
        EXIT_STALLED if a request partition is never fetched (`kafka.first_fetch`)."""
        t = self.topics
        self.watchdog.beat("topics")  # each step below waits 10-20 s at most for the broker
        # A -X setting that conflicts with an enforced one fails here, before the broker
        # checks, the metrics server and the clients (it failed after all three).
        check_settings(self.kafka, self.cfg)
        if self.cfg.threads is not None:
            set_threads(self.cfg.threads)
        # The metrics address before the broker, as the trainer: a port in use was
        # reported as "no broker" (exit 75, try again) when the cluster was down.
        with MetricsServer(self.registry, self.cfg.metrics_host, self.cfg.metrics_port,
                           ready=self.readiness) as server:
            self.metrics_port = server.port
            require_topics(self.kafka, [t.embeddings, t.score_requests, t.predictions, t.dlq],
                           compacted=[t.embeddings],
                           record_room={t.predictions: ANSWER_RECORD_MAX,
                                        t.dlq: DLQ_RECORD_MAX})
            return self._serve()

    def _serve(self) -> int:
        t, cid = self.topics, self.cfg.client_id
        with TailReader(self.kafka, t.embeddings, client_id=f"{cid}-embeddings") as tail:
            producer = ReplyProducer(self.kafka, client_id=f"{cid}-producer")
            self.watchdog.beat("open embeddings")
            self.embeddings.open(tail)
            try:
                return self._loop(tail, producer)
            finally:
                self._shutdown(producer)

    # -- requests -----------------------------------------------------------------------
    def _join(self, producer: ReplyProducer) -> RequestConsumer | None:
        """The request consumer, once this scorer may take partitions (see the module
        docstring); None until then. A group the cluster will not describe is joined."""
        if self._requests is not None:
            return self._requests
        now = time.monotonic()
        if not self.ready.is_set():
            if now < self._join_check:
                return None
            self._join_check = now + JOIN_CHECK_S
            if self._admin is None:
                self._admin = admin_client(self.kafka)
            members = group_members(self._admin, self.cfg.group_id)
            if members:
                if members != self._members_seen:
                    log.info("group=%s has %d member(s): joining it once loaded",
                             self.cfg.group_id, members)
                self._members_seen = members
                return None
        requests = RequestConsumer(
            self.kafka, client_id=f"{self.cfg.client_id}-requests", group_id=self.cfg.group_id,
            topics=[self.topics.score_requests], on_lost=self._forget,
            on_revoke=lambda parts: self._on_revoke(producer, requests, parts))
        self._requests, self._admin = requests, None
        log.info("joined group=%s ready=%s", self.cfg.group_id, self.ready.is_set())
        return requests

    def _poll_requests(self, requests: RequestConsumer, timeout: float) -> None:
        """Block up to `timeout` for the first request, then take what is already fetched."""
        room = self.cfg.batch_max - len(self._pending)
        if room <= 0:
            return
        records = requests.poll(room, timeout)
        if not records:
            return
        now = time.monotonic()
        self._pending.extend(Pending(r.topic, r.partition, r.offset, now, r.key, r.value,
                                     r.timestamp_ms if r.timestamp_ms > 0 else None,
                                     copied_headers(r.headers))
                             for r in records)
        self._last_input = now

    def _request_timeout(self, now: float) -> float:
        """How long the next request poll may block without delaying a due batch."""
        if not self.ready.is_set():
            return 0.0
        if not self._pending:
            return IDLE_POLL_S
        left = self._pending[0].arrival + self.cfg.batch_wait_ms / 1000.0 - now
        return max(0.0, left)

    def _on_revoke(self, producer: ReplyProducer, requests: RequestConsumer,
                   parts: list[Partition]) -> None:
        # Commit what was answered before the partitions move, so the new
        # owner does not answer it again; unanswered requests are dropped
        # here and re-read by the new owner from the committed offset. A
        # failed commit (no coordinator while the broker is away) costs only
        # duplicate answers, which clients drop: raised here, it would leave
        # poll() and stop the scorer mid-rebalance.
        self.watchdog.beat("revoke")  # a flush and a commit that takes no timeout (watchdog.py)
        producer.flush(10)
        if self._tracker.failure() is None:  # else the next commit stops the scorer
            try:
                self._commit(requests, asynchronous=False)
            except KafkaEdgeError as exc:
                log.warning("commit on revoke failed (%s): the new owner of partitions=%s "
                            "may answer their last requests again", exc, parts)
        self._forget(parts)

    def _forget(self, gone: list[Partition]) -> None:
        lost = set(gone)
        self._pending = [p for p in self._pending if (p.topic, p.partition) not in lost]
        self._tracker.drop(lost)
        self.metrics.forget_partitions(gone)
        log.info("revoked partitions=%s", gone)

    def _commit(self, requests: RequestConsumer, *, asynchronous: bool = True) -> None:
        failure = self._tracker.failure()
        if failure is not None:
            raise KafkaEdgeError(f"a prediction was not delivered ({failure}); stopping "
                                 "without committing it, so it is answered after restart")
        requests.commit(self._tracker.take(), asynchronous=asynchronous)
        self._last_commit = time.monotonic()

    # -- loop ---------------------------------------------------------------------------
    def _loop(self, tail: TailReader, producer: ReplyProducer) -> int:
        cfg = self.cfg
        commit_every = cfg.commit_interval_ms / 1000.0
        while not self.stop.is_set():
            self.watchdog.beat("loop")
            ready = self.ready.is_set()
            more_rows = self.embeddings.turn(tail, 0.0 if ready else IDLE_POLL_S)
            requests = self._join(producer)
            if requests is None:  # loading while other replicas serve the group
                self._lag_due(tail, None)
                continue
            self._poll_requests(requests, 0.0 if more_rows
                                else self._request_timeout(time.monotonic()))
            stuck = requests.stuck()
            if stuck:
                log_never_fetched(stuck, requests.silent_after_s, "scorer")
                return EXIT_STALLED
            now = time.monotonic()
            if due(self._pending, now, ready=self.ready.is_set(), batch_max=cfg.batch_max,
                   batch_wait_s=cfg.batch_wait_ms / 1000.0,
                   ready_hold_s=cfg.ready_hold_ms / 1000.0):
                self._answer(producer)
            producer.poll(0)
            if now - self._last_commit >= commit_every:
                self._commit(requests)
            self._lag_due(tail, requests)
            if self._idle_exit(now):
                break
        return 0

    def _answer(self, producer: ReplyProducer) -> None:
        """Rank the pending batch (or its first `BATCH_BYTES_MAX`), produce its answers, and
        track them for the commit."""
        batch, self._pending = take_batch(self._pending)
        try:
            result = answer_batch(self.table, batch, topics=self.topics, cfg=self.cfg,
                                  ready=self.ready.is_set(),
                                  on_rank=lambda: self.watchdog.beat("rank"))
            self._bugs.count(result.bugs)  # before the answers go out: a run stops uncommitted
        except BaseException:
            # The shutdown must not answer and commit later requests past this batch's:
            # none of these is answered or committed, so a restart reads them all again.
            self._pending.clear()
            raise
        tracked = self._tracker.open(next_offsets(batch))

        def on_delivered(error: str | None) -> None:
            self._tracker.delivered(tracked, error)
            if error is not None:
                self.metrics.errors.labels(reason="delivery").inc()

        for rec in result.records:
            self._tracker.sent(tracked)
            producer.send(rec.topic, rec.key, rec.value, on_delivered, rec.headers)
        self._tracker.seal(tracked)
        producer.poll(0)  # hand the answers to the network thread now, not at the next turn
        self._observe(batch, result)

    def _observe(self, batch: list[Pending], result: BatchAnswer) -> None:
        m, done, wall_ms = self.metrics, time.monotonic(), time.time() * 1000
        m.batch_size_requests.observe(len(batch))
        for arrival, produced_ms in zip(result.arrivals, result.produced_ms, strict=True):
            m.observe_request(queue_s=result.started - arrival, compute_s=result.compute_s,
                              total_s=done - arrival,
                              produced_s=None if produced_ms is None
                              else (wall_ms - produced_ms) / 1000)
        for reason in result.fallbacks:
            m.fallbacks.labels(reason=reason).inc()
        for reason in result.errors:
            m.errors.labels(reason=reason).inc()
            m.count_dlq(reason)

    def _idle_exit(self, now: float) -> bool:
        limit = self.cfg.exit_when_idle
        if limit is None or self._pending or len(self._tracker):
            return False
        last_input = max(self._last_input, self.embeddings.last_input)
        if now - last_input >= limit:
            log.info("no input for %.1fs: exiting (exit_when_idle)", now - last_input)
            return True
        return False

    def _lag_due(self, tail: TailReader, requests: RequestConsumer | None) -> None:
        """Report lag every `lag_interval_s`: the `embeddings` tail's also while loading
        and not in the request group (the ScorerNotReady runbook reads it)."""
        now = time.monotonic()
        if now - self._last_lag < self.cfg.lag_interval_s:
            return
        self._last_lag = now
        self.embeddings.report_lag(tail, now)
        for (topic, partition), lag in (requests.lag() if requests else {}).items():
            self.metrics.set_lag(topic, partition, lag)

    def _shutdown(self, producer: ReplyProducer) -> None:
        """Answer what is pending, wait for deliveries, commit them, leave the group."""
        self.watchdog.beat("shutdown")
        requests = self._requests
        if requests is None:  # stopped before it joined: nothing read, nothing to commit
            producer.flush(10)
            log.info("scorer stopped")
            return
        try:
            while self._pending:
                self.watchdog.beat("shutdown")
                self._answer(producer)
            left = producer.flush(10)
            if left:
                log.error("shutdown: %d record(s) undelivered; not committing them", left)
            elif self._tracker.failure() is not None:
                self._commit(requests, asynchronous=False)  # raises: an answer was lost
            else:
                try:
                    self._commit(requests, asynchronous=False)
                except KafkaEdgeError as exc:  # a rebalance under way (ILLEGAL_GENERATION)
                    log.warning("final commit failed (%s): the next owner of the partitions "
                                "may answer their last requests again", exc)
        finally:
            requests.close()
            log.info("scorer stopped")


def run_scorer(kafka: KafkaConfig, cfg: ScorerConfig, *, registry: CollectorRegistry | None = None,
               stop: threading.Event | None = None) -> int:
    """The `stream-app scorer` process: SIGTERM/SIGINT/SIGHUP stop it cleanly; the watchdog
    exits it (status 75) when the loop stalls for `cfg.stall_timeout_s`."""
    stop = stop if stop is not None else threading.Event()
    stop_on_signals(stop)
    freeze_survivors()
    with Watchdog(cfg.stall_timeout_s, component="scorer") as watchdog:
        return Scorer(kafka, cfg, registry=registry, stop=stop, watchdog=watchdog).run()
