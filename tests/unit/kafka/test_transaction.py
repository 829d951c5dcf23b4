"""`commit_batch`'s branch for a transaction that cannot begin (no broker needed: it
fails before anything reaches one). Everything else runs against the real broker in
tests/integration and tests/reliability."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from stream_app.kafka.transaction import TxnOutcome, commit_batch


class _NoBegin:
    """A producer whose `begin_transaction` fails: retriably (the coordinator away), or
    because librdkafka's state requires an abort first."""

    def __init__(self, *, requires_abort: bool) -> None:
        self.requires_abort = requires_abort
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")
        raise KafkaException(KafkaError(KafkaError._STATE if self.requires_abort  # noqa: SLF001
                                        else KafkaError._TIMED_OUT, "cannot begin",  # noqa: SLF001
                                        retriable=not self.requires_abort,
                                        txn_requires_abort=self.requires_abort))

    def abort_transaction(self, _timeout: float) -> None:
        self.calls.append("abort")

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} called after a failed begin")


@pytest.mark.parametrize(("requires_abort", "calls"), [(False, ["begin"]),
                                                       (True, ["begin", "abort"])])
def test_a_transaction_that_cannot_begin_is_given_up_not_raised(
        requires_abort: bool, calls: list[str]) -> None:
    producer = _NoBegin(requires_abort=requires_abort)
    outcome = commit_batch(producer, consumer=None, records=[], offsets=[],  # type: ignore[arg-type]
                           timeout_s=0.0)
    assert outcome is TxnOutcome.ABORTED and producer.calls == calls
