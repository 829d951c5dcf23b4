"""Pure serving core of the scorer: the materialised table and batched top-K.

Imports torch, never confluent_kafka; `stream_app.scorer` wires it to Kafka.
"""

from __future__ import annotations

from stream_app.device import resolve_device, set_threads
from stream_app.serving.config import ScorerConfig
from stream_app.serving.table import EmbeddingTable, TableError
from stream_app.serving.topk import COLD_USER, UNKNOWN_USER, Ranking, explain, rank
from stream_app.serving.users import UserState

__all__ = [
    "COLD_USER",
    "UNKNOWN_USER",
    "EmbeddingTable",
    "Ranking",
    "ScorerConfig",
    "TableError",
    "UserState",
    "explain",
    "rank",
    "resolve_device",
    "set_threads",
]
