"""The only package that imports confluent_kafka: clients, admin, transactions, broker."""

from __future__ import annotations

from stream_app.kafka.exceptions import (
    AuthenticationError,
    BrokerError,
    BrokerUnavailable,
    ConfigConflictError,
    FatalTransactionError,
    KafkaEdgeError,
    TopicError,
)

__all__ = [
    "AuthenticationError",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigConflictError",
    "FatalTransactionError",
    "KafkaEdgeError",
    "TopicError",
]
