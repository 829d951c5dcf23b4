"""The pure learning core: vocabulary, model, loss, optimisers, replay, evaluation.

Imports torch, numpy and `stream_app.events` only — never `confluent_kafka` —
so it can be unit-tested and benchmarked on in-memory batches, on CPU or CUDA.
"""

from __future__ import annotations

from stream_app.core.config import LearnerConfig
from stream_app.core.evaluate import EvalStats, RankMetrics
from stream_app.core.guards import Outcome
from stream_app.core.learner import Learner, default_device
from stream_app.core.stats import StepStats, TopK

__all__ = ["EvalStats", "Learner", "LearnerConfig", "Outcome", "RankMetrics", "StepStats",
           "TopK", "default_device"]
