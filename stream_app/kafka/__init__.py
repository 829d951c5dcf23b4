"""The only package that imports confluent_kafka: clients, admin, transactions, broker."""

from __future__ import annotations

from stream_app.kafka.exceptions import (
    AuthenticationError,
    BrokerError,
    ConfigConflictError,
    FatalTransactionError,
    KafkaEdgeError,
    TopicError,
)

__all__ = [
    "AuthenticationError",
    "BrokerError",
    "ConfigConflictError",
    "FatalTransactionError",
    "KafkaEdgeError",
    "TopicError",
]
