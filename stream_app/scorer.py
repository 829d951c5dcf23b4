"""The scorer: materialise `embeddings`, answer `score-requests` on `predictions`.

Wiring only (Kafka edges <-> `stream_app.serving`). One loop thread:

1. Tail `embeddings` (all partitions assigned from the beginning, no group,
   read_committed) into the `EmbeddingTable`. Ready = every partition read up to
   the end offset taken at start. Until then requests are held up to
   `ready_hold_ms`, then answered from the partial table with `ready: false`.
2. Read `score-requests` in the scorer group (cooperative-sticky,
   read_committed), micro-batch them (`batch_max` / `batch_wait_ms`), rank the
   batch with one top-K call and produce one prediction per request, keyed by
   request id. A malformed request gets an error prediction (when it carries a
   request id) and a DLQ record on `events-dlq` with its reason.
3. Commit request offsets only after everything produced for them is
   acknowledged: at-least-once. After a crash or rebalance a request may be
   answered twice, so clients dedupe by request_id (`ScoreClient` does).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer
from confluent_kafka import TopicPartition as _TP
from prometheus_client import CollectorRegistry

from stream_app.codec import DlqReason
from stream_app.config import KafkaConfig
from stream_app.kafka.admin import require_topics
from stream_app.kafka.clients import make_consumer, make_producer
from stream_app.kafka.exceptions import KafkaEdgeError
from stream_app.observability import MetricsServer, ScorerMetrics
from stream_app.serving import EmbeddingTable, ScorerConfig, resolve_device
from stream_app.serving.answers import BatchAnswer, answer_batch, apply_embedding
from stream_app.serving.batching import CommitTracker, Pending, due, next_offsets
from stream_app.serving.loading import LoadProgress
from stream_app.signals import stop_on_signals

log = logging.getLogger(__name__)

PRODUCER_LATENCY_DEFAULTS = {"linger.ms": "1"}
"""Predictions are latency-bound: a user's -X linger.ms still wins over this."""
ERROR_REASONS = (*[r.value for r in DlqReason], "bad_embedding", "delivery")


class Scorer:
    """In-process scorer: `run()` blocks until `stop` is set (or idle exit); thread-safe stop.

    `ready` is set once the initial load caught up; `metrics_port` once /metrics listens.
    """

    def __init__(self, kafka: KafkaConfig, cfg: ScorerConfig, *,
                 registry: CollectorRegistry | None = None,
                 stop: threading.Event | None = None) -> None:
        self.kafka, self.cfg, self.topics = kafka, cfg, kafka.topics
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ScorerMetrics(self.registry, dlq_reasons=[r.value for r in DlqReason],
                                     error_reasons=ERROR_REASONS)
        self.stop = stop if stop is not None else threading.Event()
        self.table = EmbeddingTable(device=resolve_device(cfg.device),
                                    history_max=cfg.history_max)
        self.ready = threading.Event()
        self.metrics_port: int | None = None
        self._progress = LoadProgress(ends={})
        self._pending: list[Pending] = []
        self._tracker = CommitTracker()
        self._last_input = time.monotonic()
        self._last_lag = 0.0

    def readiness(self) -> tuple[bool, str]:
        """/readyz: ready only once the initial `embeddings` load caught up."""
        if self.ready.is_set():
            return True, f"ready: {self.table.n_users} users, {self.table.n_items} items"
        return False, self._progress.describe()

    def run(self) -> int:
        """Serve until stopped; 0 on a clean stop, 1 if a prediction could not be delivered."""
        t = self.topics
        require_topics(self.kafka, [t.embeddings, t.score_requests, t.predictions, t.dlq])
        with MetricsServer(self.registry, self.cfg.metrics_host, self.cfg.metrics_port,
                           ready=self.readiness) as server:
            self.metrics_port = server.port
            fast = dataclasses.replace(
                self.kafka, client={**PRODUCER_LATENCY_DEFAULTS, **self.kafka.client})
            producer = make_producer(fast, f"{self.cfg.client_id}-producer")
            tail = self._open_tail()
            requests = make_consumer(self.kafka, f"{self.cfg.client_id}-requests",
                                     self.cfg.group_id)
            try:
                requests.subscribe([t.score_requests], on_assign=self._on_assign,
                                   on_revoke=self._revoker(producer, requests),
                                   on_lost=self._on_lost)
                return self._loop(tail, requests, producer)
            finally:
                self._shutdown(tail, requests, producer)

    # -- embeddings ---------------------------------------------------------------------
    def _open_tail(self) -> Consumer:
        """Assign every `embeddings` partition from the beginning; note the end offsets."""
        topic = self.topics.embeddings
        tail = make_consumer(self.kafka, f"{self.cfg.client_id}-embeddings",
                             f"{self.cfg.group_id}-embeddings-unused",
                             **{"enable.partition.eof": True})
        parts = sorted(tail.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: tail.get_watermark_offsets(_TP(topic, p), timeout=10)[1] for p in parts}
        self._progress = LoadProgress(ends=ends)
        log.info("loading topic=%s end_offsets=%s", topic, ends)
        tail.assign([_TP(topic, p, OFFSET_BEGINNING) for p in parts])
        self._check_ready()
        return tail

    def _tail(self, tail: Consumer, timeout: float) -> None:
        """Apply one poll's worth of embedding rows and tombstones to the table."""
        msgs = tail.consume(self.cfg.load_batch, timeout=timeout)
        if not msgs:
            return
        for msg in msgs:
            err = msg.error()
            if err is None:
                self._apply_row(msg)
                self._progress.read(msg.partition() or 0, msg.offset() or 0)
            elif err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001
                self._progress.eof(msg.partition() or 0, msg.offset() or 0)
            else:
                _check_error(err)
        self._last_input = time.monotonic()
        self.table.flush()
        self._report_table()
        self._check_ready()

    def _apply_row(self, msg: Message) -> None:
        reason = apply_embedding(self.table, msg.key(), msg.value())
        if reason is not None:
            self.metrics.errors.labels(reason="bad_embedding").inc()
            log.warning("bad embedding row partition=%s[%s] offset=%s reason=%s",
                        msg.topic(), msg.partition(), msg.offset(), reason)

    def _report_table(self) -> None:
        self.metrics.table_rows.labels(table="user").set(self.table.n_users)
        self.metrics.table_rows.labels(table="item").set(self.table.n_items)
        if self.table.newest_updated_at is not None:
            self.metrics.set_newest_row_time(self.table.newest_updated_at / 1000.0)

    def _check_ready(self) -> None:
        if not self.ready.is_set() and self._progress.done():
            self.ready.set()
            self.metrics.set_ready(True)
            log.info("ready users=%d items=%d records=%d", self.table.n_users,
                     self.table.n_items, self._progress.records)

    # -- requests -----------------------------------------------------------------------
    def _poll_requests(self, requests: Consumer, timeout: float) -> None:
        """Block up to `timeout` for the first request, then drain what is already fetched."""
        room = self.cfg.batch_max - len(self._pending)
        if room <= 0:
            return
        first = requests.poll(timeout)
        if first is None:
            return
        msgs = [first, *requests.consume(room - 1, timeout=0)] if room > 1 else [first]
        now = time.monotonic()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                _check_error(err)
                continue
            self._pending.append(Pending(msg.topic() or "", msg.partition() or 0,
                                         msg.offset() or 0, now, msg.key(), msg.value()))
        self._last_input = now

    def _request_timeout(self, now: float) -> float:
        """How long the next request poll may block without delaying a due batch."""
        if not self.ready.is_set():
            return 0.0
        if not self._pending:
            return 0.05
        left = self._pending[0].arrival + self.cfg.batch_wait_ms / 1000.0 - now
        return max(0.0, left)

    def _on_assign(self, _c: Consumer, parts: list[_TP]) -> None:
        log.info("assigned partitions=%s", [(tp.topic, tp.partition) for tp in parts])

    def _revoker(self, producer: Producer, requests: Consumer) -> Callable[[Consumer, list[_TP]],
                                                                            None]:
        def on_revoke(_c: Consumer, parts: list[_TP]) -> None:
            # Commit what was answered before the partitions move, so the new
            # owner does not answer it again; unanswered requests are dropped
            # here and re-read by the new owner from the committed offset.
            producer.flush(10)
            self._commit(requests, asynchronous=False)
            self._forget([(tp.topic, tp.partition) for tp in parts])
        return on_revoke

    def _on_lost(self, _c: Consumer, parts: list[_TP]) -> None:
        self._forget([(tp.topic, tp.partition) for tp in parts])

    def _forget(self, gone: list[tuple[str, int]]) -> None:
        lost = set(gone)
        self._pending = [p for p in self._pending if (p.topic, p.partition) not in lost]
        self._tracker.drop(lost)
        self.metrics.forget_partitions(gone)
        log.info("revoked partitions=%s", gone)

    def _commit(self, requests: Consumer, *, asynchronous: bool = True) -> None:
        failure = self._tracker.failure()
        if failure is not None:
            raise KafkaEdgeError(f"a prediction was not delivered ({failure}); stopping "
                                 "without committing it, so it is answered after restart")
        offsets = self._tracker.take()
        if not offsets:
            return
        parts = [_TP(t, p, o) for (t, p), o in offsets.items()]
        if asynchronous:
            requests.commit(offsets=parts, asynchronous=True)
        else:
            requests.commit(offsets=parts, asynchronous=False)

    # -- loop ---------------------------------------------------------------------------
    def _loop(self, tail: Consumer, requests: Consumer, producer: Producer) -> int:
        cfg = self.cfg
        while not self.stop.is_set():
            ready = self.ready.is_set()
            self._tail(tail, 0.0 if ready else 0.05)
            self._poll_requests(requests, self._request_timeout(time.monotonic()))
            now = time.monotonic()
            if due(self._pending, now, ready=self.ready.is_set(), batch_max=cfg.batch_max,
                   batch_wait_s=cfg.batch_wait_ms / 1000.0,
                   ready_hold_s=cfg.ready_hold_ms / 1000.0):
                self._answer(producer)
            producer.poll(0)
            self._commit(requests)
            if now - self._last_lag >= cfg.lag_interval_s:
                self._last_lag = now
                self._report_lag(tail, requests)
            if self._idle_exit(now):
                break
        return 0

    def _answer(self, producer: Producer) -> None:
        """Rank the pending batch, produce its answers, and track them for the commit."""
        batch, self._pending = self._pending, []
        result = answer_batch(self.table, batch, topics=self.topics, cfg=self.cfg,
                              ready=self.ready.is_set())
        tracked = self._tracker.open(next_offsets(batch))

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            self._tracker.delivered(tracked, None if err is None else err.str())
            if err is not None:
                self.metrics.errors.labels(reason="delivery").inc()

        for rec in result.records:
            self._tracker.sent(tracked)
            _produce(producer, rec.topic, rec.key, rec.value, on_delivery)
        self._tracker.seal(tracked)
        self._observe(batch, result)

    def _observe(self, batch: list[Pending], result: BatchAnswer) -> None:
        m, done = self.metrics, time.monotonic()
        m.batch_size_requests.observe(len(batch))
        for arrival in result.arrivals:
            m.observe_request(queue_s=result.started - arrival, compute_s=result.compute_s,
                              total_s=done - arrival)
        for reason in result.fallbacks:
            m.fallbacks.labels(reason=reason).inc()
        for reason in result.errors:
            m.errors.labels(reason=reason).inc()
            m.count_dlq(reason)

    def _idle_exit(self, now: float) -> bool:
        limit = self.cfg.exit_when_idle
        if limit is None or self._pending or len(self._tracker):
            return False
        if now - self._last_input >= limit:
            log.info("no input for %.1fs: exiting (exit_when_idle)", now - self._last_input)
            return True
        return False

    def _report_lag(self, *consumers: Consumer) -> None:
        for consumer in consumers:
            parts = consumer.assignment()
            if not parts:
                continue
            for tp in consumer.position(parts):
                _low, high = consumer.get_watermark_offsets(tp, cached=True) or (-1, -1)
                if tp.offset >= 0 and high >= 0:
                    self.metrics.set_lag(tp.topic, tp.partition, high - tp.offset)

    def _shutdown(self, tail: Consumer, requests: Consumer, producer: Producer) -> None:
        """Answer what is pending, wait for deliveries, commit them, leave the group."""
        try:
            if self._pending:
                self._answer(producer)
            left = producer.flush(10)
            if left:
                log.error("shutdown: %d record(s) undelivered; not committing them", left)
            else:
                self._commit(requests, asynchronous=False)
        finally:
            requests.close()
            tail.close()
            log.info("scorer stopped")


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes,
             on_delivery: Callable[[KafkaError | None, Message], None]) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
            return
        except BufferError:  # local queue full: serve delivery reports, then retry
            producer.poll(0.05)


def _check_error(err: KafkaError) -> None:
    if err.fatal():
        raise KafkaEdgeError(f"consumer failed fatally: {err.str()}")
    log.warning("consumer error code=%s reason=%s", err.name(), err.str())


def run_scorer(kafka: KafkaConfig, cfg: ScorerConfig, *, registry: CollectorRegistry | None = None,
               stop: threading.Event | None = None) -> int:
    """The `stream-app scorer` process: SIGTERM/SIGINT stop it cleanly."""
    stop = stop if stop is not None else threading.Event()
    stop_on_signals(stop)
    return Scorer(kafka, cfg, registry=registry, stop=stop).run()
