"""`commit_batch`'s branch for a transaction that cannot begin (no broker needed: it
fails before anything reaches one). Everything else runs against the real broker in
tests/integration and tests/reliability."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException

from stream_app.kafka.transaction import TxnOutcome, commit_batch


class _NoBegin:
    """A producer whose `begin_transaction` keeps failing as a retriable error does."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "coordinator away",  # noqa: SLF001
                                        retriable=True))

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} called after a failed begin")


def test_a_transaction_that_cannot_begin_is_given_up_not_raised() -> None:
    producer = _NoBegin()
    outcome = commit_batch(producer, consumer=None, records=[], offsets=[],  # type: ignore[arg-type]
                           timeout_s=0.0)
    assert outcome is TxnOutcome.ABORTED and producer.calls == ["begin"]
