"""The scorer's Prometheus metrics (`metrics` has the shared base and the naming rules).

Latency buckets follow the scorer's p99 <= 20 ms target in DESIGN.md: fine around it,
coarse elsewhere (a quantile is only as good as its buckets).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream_app import __version__
from stream_app.observability.metrics import TABLES, _ProcessMetrics

#: Scorer latency: fine between 1 and 50 ms around the 20 ms p99 target.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175,
    0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
)
BATCH_REQUESTS_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(0, 21))
"""Up to 2**20: `scorer.batch_max` may be 1,000,000, and buckets that stopped at 2,048
flattened the dashboard's batch-size p50 there."""


class RequestPhase(StrEnum):
    """Scorer latency split: waiting in the micro-batch, top-K compute, read to answered
    (`total`), and produced to answered (`produced`: also the time the request waited in
    Kafka, which is where a backlog waits; on the producer's and the scorer's clocks)."""

    QUEUE = "queue"
    COMPUTE = "compute"
    TOTAL = "total"
    PRODUCED = "produced"


class FallbackReason(StrEnum):
    """Why the scorer answered from popularity instead of the user's vector."""

    UNKNOWN_USER = "unknown_user"
    COLD_USER = "cold_user"
    NOT_LOADED = "not_loaded"
    BAD_USER_VECTOR = "bad_user_vector"


class ScorerMetrics(_ProcessMetrics):
    """The scorer's metrics on `registry`.

    Staleness is computed at scrape time from the newest row's `updated_at`, so
    it keeps growing when the trainer stops publishing.

    >>> m = ScorerMetrics(CollectorRegistry())
    >>> m.observe_request(queue_s=0.001, compute_s=0.002, total_s=0.004)
    >>> m.registry.get_sample_value(
    ...     "stream_app_scorer_request_seconds_count", {"phase": "total"})
    1.0
    """

    def __init__(self, registry: CollectorRegistry, *, tables: Sequence[str] = TABLES,
                 dlq_reasons: Sequence[str] = (), error_reasons: Sequence[str] = (),
                 version: str = __version__) -> None:
        super().__init__(registry, role="scorer", version=version, dlq_reasons=dlq_reasons)
        r = registry
        self.request_seconds = Histogram(
            "stream_app_scorer_request_seconds",
            "Request latency by phase: queue (wait for batch), compute (top-k), total "
            "(read to answered), produced (produced to answered).",
            ["phase"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size_requests = Histogram(
            "stream_app_scorer_batch_size_requests", "Requests per scored micro-batch.",
            buckets=BATCH_REQUESTS_BUCKETS, registry=r)
        self.fallbacks = Counter(
            "stream_app_scorer_fallbacks_total",
            "Requests answered from popularity instead of the user's vector.",
            ["reason"], registry=r)
        self.errors = Counter(
            "stream_app_scorer_errors_total", "Requests answered with an error or not delivered, "
            "and embeddings rows skipped (bad_embedding), by reason.",
            ["reason"], registry=r)
        self.table_rows = Gauge(
            "stream_app_scorer_table_rows", "Rows materialised per table.", ["table"],
            registry=r)
        self.staleness_seconds = Gauge(
            "stream_app_scorer_staleness_seconds",
            "Now minus the newest loaded row's updated_at (NaN before the first row).",
            registry=r)
        self.ready = Gauge(
            "stream_app_scorer_ready", "1 once the embeddings table is fully loaded.",
            registry=r)
        self._newest_row_s = math.nan
        self.staleness_seconds.set_function(self._staleness)
        for phase in RequestPhase:
            self.request_seconds.labels(phase=phase)
        for fallback in FallbackReason:
            self.fallbacks.labels(reason=fallback)
        for error in error_reasons:
            self.errors.labels(reason=error)
        for table in tables:
            self.table_rows.labels(table=table)

    def _staleness(self) -> float:
        return time.time() - self._newest_row_s

    def observe_request(self, *, queue_s: float, compute_s: float, total_s: float,
                        produced_s: float | None = None) -> None:
        """Observe one answered request; `total` counts every answer, so it is the rate base.
        `produced_s` (a clock skew below zero counts as 0) only when the request's record
        carried its produce time."""
        self.request_seconds.labels(phase=RequestPhase.QUEUE).observe(queue_s)
        self.request_seconds.labels(phase=RequestPhase.COMPUTE).observe(compute_s)
        self.request_seconds.labels(phase=RequestPhase.TOTAL).observe(total_s)
        if produced_s is not None:
            self.request_seconds.labels(phase=RequestPhase.PRODUCED).observe(max(produced_s, 0.0))

    def set_newest_row_time(self, updated_at_s: float) -> None:
        """Remember the newest loaded row's `updated_at` (epoch seconds); only moves forward."""
        if math.isnan(self._newest_row_s) or updated_at_s > self._newest_row_s:
            self._newest_row_s = updated_at_s

    def set_ready(self, ready: bool) -> None:
        """Flip the readiness gauge (mirrors what /readyz answers)."""
        self.ready.set(1.0 if ready else 0.0)
