"""Errors of the Kafka edge; library errors are re-raised as these `from exc`."""

from __future__ import annotations


class KafkaEdgeError(Exception): """Base of every error raised by stream_app.kafka."""
class BrokerError(KafkaEdgeError): """The local broker could not be set up, started or reached."""
class AuthenticationError(BrokerError): """The broker refused our credentials (SASL)."""
class BrokerUnavailable(BrokerError): """No broker answered: a restart later may succeed."""
class ConfigConflictError(KafkaEdgeError): """A user librdkafka setting conflicts with ours."""
class TopicError(KafkaEdgeError): """Topics are missing or could not be created."""
class FatalTransactionError(KafkaEdgeError): """The producer was fenced or failed fatally."""
class ChangelogError(KafkaEdgeError): """The changelog holds a record a restore cannot read."""
