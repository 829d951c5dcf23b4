"""Prometheus metrics (one class per process), the /metrics + health HTTP server,
and a JSONL recorder for offline reports. Nothing here imports Kafka or torch."""

from __future__ import annotations

from stream_app.observability.metrics import (
    EvalModel,
    EventOutcome,
    FreshnessSince,
    TrainerMetrics,
    declared_metric_names,
    exposed_names,
)
from stream_app.observability.recorder import MetricsRecorder, snapshot
from stream_app.observability.scorer_metrics import FallbackReason, RequestPhase, ScorerMetrics
from stream_app.observability.server import MetricsServer, ReadyCheck, always_ready

__all__ = [
    "EvalModel",
    "EventOutcome",
    "FallbackReason",
    "FreshnessSince",
    "MetricsRecorder",
    "MetricsServer",
    "ReadyCheck",
    "RequestPhase",
    "ScorerMetrics",
    "TrainerMetrics",
    "always_ready",
    "declared_metric_names",
    "exposed_names",
    "snapshot",
]
