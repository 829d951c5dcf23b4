"""Prometheus metrics: what every process has, the trainer's, and the naming checks (the
scorer's are in `scorer_metrics`). One class per process, never module globals.

Each class creates its metrics on the `CollectorRegistry` it is given, so a test
builds a fresh registry and two processes' metrics never clash. Components get
the object injected and touch only its attributes and helpers.

Naming: `stream_app_` prefix, a unit suffix (`_seconds`, `_total`, `_events`,
`_rows`, `_messages`), and only bounded labels (topic, partition, outcome,
reason, table, model, since, phase) — never a user or item id, which would
make one time series per user.

Buckets follow the targets in DESIGN.md: embedding freshness p99 <= 1 s here (and
scorer latency p99 <= 20 ms in `scorer_metrics`), fine-grained around those
thresholds and coarse elsewhere (a quantile is only as good as its buckets).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import StrEnum

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

from stream_app import __version__
from stream_app.observability.bulk import BulkHistogram

PREFIX = "stream_app_"
TABLES: tuple[str, ...] = ("user", "item")
#: Freshness: fine up to 2 s around the 1 s p99 target; the tail catches replays.
FRESHNESS_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5,
    2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0,
    600.0, 1800.0, 3600.0,
)
"""Dense to 1 s (the alert's target), then at most 2x apart up to 10 minutes: a trainer
catching up on a backlog sits there, and a quantile interpolated inside 60-300 s read
82 s as 297 s (the demo's live p99)."""
#: Trainer loop phases (step, transaction, whole batch): sub-ms to seconds, and past
#: transaction.timeout.ms (30 s) for a commit that waits out a broker.
STEP_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0,
)
BATCH_EVENTS_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(0, 21))
"""Up to 2**20: `batch_max` and `step_max` go to 1,000,000 (a GPU wants large steps)."""



class EventOutcome(StrEnum):
    """What happened to one input event; every event read gets exactly one."""

    APPLIED = "applied"
    DLQ = "dlq"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate_limited"


class EvalModel(StrEnum):
    """Prequential evaluation compares the model with the popularity baseline."""

    MODEL = "model"
    POPULARITY = "popularity"


class FreshnessSince(StrEnum):
    """Start of the freshness clock: producer's event time or broker append time."""

    EVENT_TIME = "event_time"
    PRODUCE_TIME = "produce_time"


class _ProcessMetrics:
    """Metrics every Kafka process has: lag per partition, DLQ records, build info."""

    def __init__(self, registry: CollectorRegistry, *, role: str, version: str,
                 dlq_reasons: Sequence[str]) -> None:
        self.registry = registry
        self.consumer_lag = Gauge(
            "stream_app_consumer_lag_messages",
            "High watermark minus committed/position offset, per assigned partition.",
            ["topic", "partition"], registry=registry)
        self.dlq_records = Counter(
            "stream_app_dlq_records_total",
            "Records sent to the dead-letter topic, by reason (nothing is dropped silently).",
            ["reason"], registry=registry)
        self.build_info = Info(
            "stream_app_build", "Version and role of this process (value is always 1).",
            registry=registry)
        self.build_info.info({"version": version, "role": role})
        # process_* (start time, RSS, CPU, open fds; Linux): the supervisor's restarts
        # show as start-time changes (alert ProcessRestarting), memory as RSS.
        ProcessCollector(registry=registry)
        for reason in dlq_reasons:
            self.dlq_records.labels(reason=reason)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Record lag of one assigned partition (labels bounded by partition count)."""
        self.consumer_lag.labels(topic=topic, partition=str(partition)).set(max(lag, 0))

    def forget_partitions(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Drop lag series of revoked partitions, so a stale lag never lingers."""
        for topic, partition in partitions:
            try:
                self.consumer_lag.remove(topic, str(partition))
            except KeyError:
                continue  # never reported for this partition: nothing to forget

    def count_dlq(self, reason: str, n: int = 1) -> None:
        """Count `n` records sent to the DLQ with one reason (a `DlqReason` value)."""
        self.dlq_records.labels(reason=reason).inc(n)


RESTORE_REASONS = ("start", "abort", "rebalance")
"""Why the trainer rebuilt its learner from the changelog (`stream_app_restores_total`)."""


class TrainerMetrics(_ProcessMetrics):
    """The trainer's metrics on `registry`.

    `k` is the cut-off of the prequential metrics and becomes the `k` label;
    `input_topics`, `tables` and `dlq_reasons` pre-create counter series at 0,
    so `rate()` and the alert rules see them before the first event.

    >>> m = TrainerMetrics(CollectorRegistry(), k=10, input_topics=["clicks"])
    >>> m.count_events("clicks", EventOutcome.APPLIED, 3)
    >>> m.registry.get_sample_value(
    ...     "stream_app_events_total", {"topic": "clicks", "outcome": "applied"})
    3.0
    """

    def __init__(self, registry: CollectorRegistry, *, k: int,
                 input_topics: Sequence[str] = (), tables: Sequence[str] = TABLES,
                 dlq_reasons: Sequence[str] = (), version: str = __version__) -> None:
        super().__init__(registry, role="trainer", version=version, dlq_reasons=dlq_reasons)
        self.k = str(k)
        r = registry
        self.events = Counter(
            "stream_app_events_total", "Input events read, by topic and outcome.",
            ["topic", "outcome"], registry=r)
        self.events_misrouted = Counter(
            "stream_app_events_misrouted_total",
            "Input events and forget requests on a partition where neither librdkafka's "
            "default partitioner nor Java's puts their user id: applied all the same, but "
            "such a user's events and forget requests are split over partitions (README, "
            "Partitioner).",
            ["topic"], registry=r)
        self.batch_size_events = Histogram(
            "stream_app_batch_size_events", "Events per polled micro-batch.",
            buckets=BATCH_EVENTS_BUCKETS, registry=r)
        self.step_seconds = Histogram(
            "stream_app_step_seconds", "Duration of one incremental learning step.",
            buckets=STEP_BUCKETS_S, registry=r)
        self.evaluate_seconds = Histogram(
            "stream_app_evaluate_seconds",
            "Duration of one prequential evaluation (the first steps of a batch).",
            buckets=STEP_BUCKETS_S, registry=r)
        self.transaction_seconds = Histogram(
            "stream_app_transaction_seconds",
            "Duration of publish + send_offsets + commit of one Kafka transaction.",
            buckets=STEP_BUCKETS_S, registry=r)
        self.batch_seconds = Histogram(
            "stream_app_batch_seconds",
            "One batch's work: from its decoding to its commit or abort (the poll's wait and "
            "the lag and first-fetch checks after it are not in it).",
            buckets=STEP_BUCKETS_S, registry=r)
        self.training_loss = Gauge(
            "stream_app_training_loss",
            "Training loss of the latest committed batch, its steps weighted by events.",
            registry=r)
        self.prequential_loss = Gauge(
            "stream_app_prequential_loss",
            "Full-softmax cross-entropy of the latest committed batch's evaluated events, "
            "before learning from them.",
            registry=r)
        self.prequential_hit_rate = Gauge(
            "stream_app_prequential_hit_rate",
            "Prequential HitRate@k of the latest committed batch: per user within a step, "
            "any of their events' items in the top-k before learning from them.",
            ["model", "k"], registry=r)
        self.prequential_recall = Gauge(
            "stream_app_prequential_recall", "Prequential recall at k of the latest batch.",
            ["model", "k"], registry=r)
        self.prequential_mrr = Gauge(
            "stream_app_prequential_mrr", "Prequential mean reciprocal rank (cut at k).",
            ["model", "k"], registry=r)
        self.prequential_sampled = Gauge(
            "stream_app_prequential_sampled",
            "1 when the latest batch's prequential ranks are estimates from a sample of "
            "learner.eval_max_items items (the catalogue is larger; model and popularity "
            "ranked in the same sample), else 0.", registry=r)
        self.freshness_seconds = BulkHistogram(
            "stream_app_freshness_seconds",
            "Time from an event (event time or produce time) until its rows are published.",
            "since", FRESHNESS_BUCKETS_S, registry=r)
        self.table_rows = Gauge(
            "stream_app_table_rows", "Live rows per embedding table.", ["table"], registry=r)
        self.admissions = Counter(
            "stream_app_admissions_total", "Ids given their own row.", ["table"], registry=r)
        self.evictions = Counter(
            "stream_app_evictions_total",
            "Rows evicted: idle past learner.idle_ttl_ms of event time, or the least recent "
            "at the learner.max_users / max_items cap.", ["table"], registry=r)
        self.forgets = Counter(
            "stream_app_forgets_total",
            "Forget requests applied and committed (each publishes its user's tombstone).",
            registry=r)
        self.rows_published = Counter(
            "stream_app_rows_published_total", "Rows published to the embeddings topic.",
            ["table"], registry=r)
        self.transaction_aborts = Counter(
            "stream_app_transaction_aborts_total",
            "Aborted transactions (the batch is rewound and re-read).", registry=r)
        self.restores = Counter(
            "stream_app_restores_total",
            "Rebuilds of the learner from the changelog (and snapshot), by reason: start, "
            "abort (back to the committed state), rebalance (partitions assigned while the "
            "changelog was not provably this trainer's alone since its last restore).",
            ["reason"], registry=r)
        self.restore_seconds = Gauge(
            "stream_app_restore_seconds",
            "Duration of the last restore from snapshot + changelog.", registry=r)
        self.restored_rows = Gauge(
            "stream_app_restored_rows", "Rows in the learner after its last restore, per table.",
            ["table"], registry=r)
        self.restore_snapshot_age = Gauge(
            "stream_app_restore_snapshot_age_seconds",
            "Age of the local snapshot the last restore started from; -1 when it read the "
            "whole changelog (and before the first restore).", registry=r)
        self.restore_snapshot_age.set(-1)
        self.snapshot_written = Gauge(
            "stream_app_snapshot_written_timestamp_seconds",
            "Unix time of the last local snapshot written (0: none yet).", registry=r)
        self.last_commit = Gauge(
            "stream_app_last_commit_timestamp_seconds",
            "Unix time of the trainer's last committed transaction (0: none yet).", registry=r)
        self.ready = Gauge(
            "stream_app_trainer_ready",
            "1 while the trainer has restored and is learning (what /readyz answers); 0 while "
            "it restores, at start or after a rebalance.", registry=r)
        self.snapshot_interval = Gauge(
            "stream_app_snapshot_interval_seconds",
            "How often a local snapshot is due (trainer.snapshot_interval_s); 0 when "
            "snapshots are off.", registry=r)
        self._precreate(input_topics, tables)

    def _precreate(self, input_topics: Sequence[str], tables: Sequence[str]) -> None:
        for topic in input_topics:
            self.events_misrouted.labels(topic=topic)
            for outcome in EventOutcome:
                self.events.labels(topic=topic, outcome=outcome)
        for table in tables:
            for counter in (self.admissions, self.evictions, self.rows_published):
                counter.labels(table=table)
        for since in FreshnessSince:
            self.freshness_seconds.labels(since)
        for reason in RESTORE_REASONS:
            self.restores.labels(reason=reason)

    def count_events(self, topic: str, outcome: EventOutcome, n: int = 1) -> None:
        """Count `n` events of one topic with one outcome."""
        self.events.labels(topic=topic, outcome=outcome).inc(n)

    def set_prequential(self, model: EvalModel, *, hit_rate: float, recall: float,
                        mrr: float) -> None:
        """Publish one batch's test-then-train scores for the model or the baseline."""
        self.prequential_hit_rate.labels(model=model, k=self.k).set(hit_rate)
        self.prequential_recall.labels(model=model, k=self.k).set(recall)
        self.prequential_mrr.labels(model=model, k=self.k).set(mrr)

    def observe_freshness(self, since: FreshnessSince, seconds: Iterable[float]) -> None:
        """One observation per published event; negative skew (clock drift) counts as 0."""
        values = np.fromiter(seconds, dtype=np.float64)
        self.freshness_seconds.observe_many(since, np.maximum(values, 0.0))


_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def exposed_names(registry: CollectorRegistry) -> frozenset[str]:
    """Every sample name the registry can expose, labelled children or not.

    Alert rules and the dashboard may use only these; checking against this set
    catches a renamed metric before Prometheus silently returns no data.
    """
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return frozenset(names)


def declared_metric_names() -> frozenset[str]:
    """Names exposed by the trainer and scorer classes (built on throwaway registries)."""
    from stream_app.observability.scorer_metrics import ScorerMetrics  # it imports this

    trainer, scorer = CollectorRegistry(), CollectorRegistry()
    TrainerMetrics(trainer, k=10)
    ScorerMetrics(scorer)
    return exposed_names(trainer) | exposed_names(scorer)


def metric_objects(metrics: _ProcessMetrics) -> dict[str, MetricWrapperBase]:
    """Attribute name -> metric object of one metrics class (for docs and tests)."""
    return {k: v for k, v in vars(metrics).items() if isinstance(v, MetricWrapperBase)}
