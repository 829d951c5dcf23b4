"""`commit_batch`'s branch for a transaction that cannot begin (no broker needed: it
fails before anything reaches one), and where an aborted batch is read again from.
Everything else runs against the real broker in tests/integration and tests/reliability."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, TopicPartition

from stream_app.config import KafkaConfig
from stream_app.kafka import transaction
from stream_app.kafka.exceptions import BrokerUnavailable
from stream_app.kafka.transaction import (
    OutRecord,
    SpotCheck,
    TxnOutcome,
    commit_batch,
    rewind_to_committed,
)


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
                           starts={}, timeout_s=0.0)
    assert outcome is TxnOutcome.ABORTED and producer.calls == calls


class _Positions:
    """A consumer stand-in: `committed` answers from a table (OFFSET_INVALID = none
    committed, or an error for the partition); `seek` records where it went."""

    def __init__(self, committed: dict[tuple[str, int], int | KafkaError]) -> None:
        self.table = committed
        self.seeks: list[tuple[str, int, int]] = []

    def committed(self, parts: list[TopicPartition], timeout: float) -> list[SimpleNamespace]:
        out = []
        for tp in parts:
            value = self.table[(tp.topic, tp.partition)]
            failed = isinstance(value, KafkaError)
            out.append(SimpleNamespace(topic=tp.topic, partition=tp.partition,
                                       offset=OFFSET_INVALID if failed else value,
                                       error=value if failed else None))
        return out

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def test_an_aborted_batch_is_read_again_from_its_first_offset_when_none_is_committed() -> None:
    """Not from offset 0: with auto.offset.reset=latest that replays skipped history, or,
    offset 0 deleted by retention, resets to the end and loses the batch."""
    consumer = _Positions({("clicks", 0): 120, ("clicks", 1): OFFSET_INVALID,
                           ("clicks", 2): KafkaError(KafkaError.UNSTABLE_OFFSET_COMMIT)})
    batch = [TopicPartition("clicks", p, 0) for p in range(3)]
    rewind_to_committed(consumer, batch,  # type: ignore[arg-type]
                        {("clicks", 0): 150, ("clicks", 1): 5000, ("clicks", 2): 7000})
    # The committed offset wins where there is one (120, not the batch's 150).
    assert consumer.seeks == [("clicks", 0, 120), ("clicks", 1, 5000), ("clicks", 2, 7000)]


class _CommittedFails(_Positions):
    """`committed` raises (the group coordinator moved) every time."""

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.asked = getattr(self, "asked", 0) + 1
        raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, "Not coordinator"))


def test_an_abort_whose_committed_offsets_cannot_be_read_rewinds_to_the_batch_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """NOT_COORDINATOR from committed() raised out of the abort path: the trainer exited
    with a traceback instead of reading the batch again."""
    monkeypatch.setattr(transaction.time, "sleep", lambda _s: None)
    consumer = _CommittedFails({})
    batch = [TopicPartition("clicks", p, 0) for p in range(2)]
    rewind_to_committed(consumer, batch,  # type: ignore[arg-type]
                        {("clicks", 0): 150, ("clicks", 1): 5000})
    assert consumer.seeks == [("clicks", 0, 150), ("clicks", 1, 5000)]
    assert consumer.asked == transaction.REWIND_TRIES


class _SeekFails(_Positions):
    """`seek` fails for every partition; `owned` are those still assigned."""

    def __init__(self, owned: list[tuple[str, int]]) -> None:
        super().__init__({("clicks", 0): 10, ("clicks", 1): 20})
        self.owned = owned

    def seek(self, tp: TopicPartition) -> None:
        raise KafkaException(KafkaError(KafkaError._STATE, "erroneous state"))  # noqa: SLF001

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.owned]


def test_a_rewind_that_fails_on_a_partition_still_ours_stops_the_trainer() -> None:
    """Logged and read on, the aborted batch's events were skipped: neither applied nor
    dead-lettered. A revoked partition's failure is still only logged."""
    from stream_app.kafka.exceptions import FatalTransactionError

    batch = [TopicPartition("clicks", p, 0) for p in range(2)]
    rewind_to_committed(_SeekFails(owned=[]), batch, {})  # type: ignore[arg-type]
    with pytest.raises(FatalTransactionError, match=r"cannot rewind clicks\[1\]"):
        rewind_to_committed(_SeekFails(owned=[("clicks", 1)]), batch, {})  # type: ignore[arg-type]


def _delivered(topic: str, partition: int) -> Any:
    """What a delivery report reads of a confluent_kafka.Message."""
    return SimpleNamespace(topic=lambda: topic, partition=lambda: partition)


def test_spot_check_keeps_the_first_record_of_its_topic_and_where_it_went() -> None:
    """One delivery report per transaction checks the partitions the trainer computes;
    an error leaves the partition unknown (so the trainer restores next time)."""
    spot = SpotCheck("emb")
    records = [OutRecord("dlq", b"k0", b"v"), OutRecord("emb", b"user:1", b"v"),
               OutRecord("emb", b"user:2", b"v")]
    producer = _Recording()
    assert commit_batch(producer, consumer=_Group(), records=records,  # type: ignore[arg-type]
                        offsets=[], starts={}, spot=spot) is TxnOutcome.COMMITTED
    assert spot.key == b"user:1"
    assert [cb is not None for _, cb in producer.produced] == [False, True, False]
    spot.report(None, _delivered("emb", 2))
    assert spot.partition == 2
    failed = SpotCheck("emb")
    failed.report(KafkaError(KafkaError._PURGE_QUEUE), _delivered("emb", 0))  # noqa: SLF001
    assert failed.partition is None


class _Recording:
    """A producer that accepts everything and keeps (key, on_delivery) per record."""

    def __init__(self) -> None:
        self.produced: list[tuple[bytes, Any]] = []

    def begin_transaction(self) -> None: ...
    def send_offsets_to_transaction(self, *_: Any) -> None: ...
    def commit_transaction(self, *_: Any) -> None: ...
    def poll(self, *_: Any) -> int:
        return 0

    def produce(self, _topic: str, *, key: bytes, on_delivery: Any = None, **_: Any) -> None:
        self.produced.append((key, on_delivery))


class _Group:
    def consumer_group_metadata(self) -> object:
        return object()


@pytest.mark.parametrize("error", [
    KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True)),  # noqa: SLF001
    SystemError("<function SpotCheck.report> returned a result with an exception set"),
])
def test_closing_a_failed_producer_never_masks_the_error_that_stopped_the_loop(
        error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    """A fenced producer's flush raised SystemError from a delivery callback, which
    replaced the fencing error on its way out of the loop's `finally` (walkthrough)."""
    from stream_app.kafka.transaction import TransactionalPublisher

    def flush(timeout: float) -> int:
        raise error

    publisher = object.__new__(TransactionalPublisher)  # no broker: only close() runs
    publisher._producer = SimpleNamespace(flush=flush)  # type: ignore[assignment]  # noqa: SLF001
    publisher._timeout_s = 1.0  # noqa: SLF001
    publisher._failed = False  # noqa: SLF001 - not known to have failed: it flushes
    publisher.close()
    assert "producer close" in caplog.text


def test_a_publisher_whose_transaction_failed_fatally_is_closed_without_a_flush(
        caplog: pytest.LogCaptureFixture) -> None:
    """Its queue cannot be delivered, and confluent_kafka ran a delivery callback with an
    exception set (SystemError) when such a producer was flushed (walkthrough)."""
    from stream_app.kafka.transaction import TransactionalPublisher

    flushes: list[float] = []  # recorded, not raised: close() swallows what flush raises

    def flush(timeout: float) -> int:
        flushes.append(timeout)
        return 0

    publisher = object.__new__(TransactionalPublisher)  # no broker: only close() runs
    publisher._producer = SimpleNamespace(flush=flush)  # type: ignore[assignment]  # noqa: SLF001
    publisher._timeout_s = 1.0  # noqa: SLF001
    publisher._failed = True  # noqa: SLF001 - what commit() sets on FatalTransactionError
    caplog.set_level(logging.INFO)
    publisher.close()
    assert flushes == []
    assert "not flushed after a fatal transaction error" in caplog.text


def test_a_transaction_coordinator_that_does_not_answer_is_retriable() -> None:
    """init_transactions timing out (no broker here; in production a coordinator still
    being elected) is exit 75, try again: as FatalTransactionError it was exit 1, which
    a supervisor that restarts on 75 left down."""
    with pytest.raises(BrokerUnavailable, match="did not finish in 1 s.*exit 75"):
        transaction.TransactionalPublisher(KafkaConfig(bootstrap_servers="127.0.0.1:1"),
                                           transactional_id="t", client_id="c", timeout_s=1.0)


class _Txn(_Recording):
    """A producer whose commit fails with `error` (None: it commits); `calls` in order."""

    def __init__(self, error: KafkaError | None = None) -> None:
        super().__init__()
        self.error, self.calls = error, []

    def init_transactions(self, _timeout: float) -> None:
        self.calls.append("init")

    def commit_transaction(self, *_: Any) -> None:
        self.calls.append("commit")
        if self.error is not None:
            raise KafkaException(self.error)

    def abort_transaction(self, *_: Any) -> None:
        self.calls.append("abort")

    def purge(self, **_: Any) -> None:
        self.calls.append("purge")


class _Consumer(_Positions):
    def consumer_group_metadata(self) -> object:
        return object()

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("in", 0)]


FENCED = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)  # noqa: SLF001


def _publish(monkeypatch: pytest.MonkeyPatch, producers: list[_Txn], timeout_ms: str,
             batches: int) -> tuple[list[TxnOutcome], _Consumer]:
    """`batches` commits of one record through a publisher whose producers are `producers`,
    in the order it starts them, under -X transaction.timeout.ms=`timeout_ms`."""
    from stream_app.kafka.transaction import TransactionalPublisher

    started = iter(producers)
    monkeypatch.setattr(transaction, "make_producer", lambda *_a, **_k: next(started))
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:1",
                        client={"transaction.timeout.ms": timeout_ms})
    publisher = TransactionalPublisher(kafka, transactional_id="t", client_id="c",
                                       timeout_s=1.0)
    raw = _Consumer({("in", 0): 5})
    group = SimpleNamespace(raw=raw, discard_queued=lambda _offsets: None)
    outcomes = [publisher.commit(group, [OutRecord("emb", b"k", b"v")],  # type: ignore[arg-type]
                                 {("in", 0): 9}, {("in", 0): 5}) for _ in range(batches)]
    return outcomes, raw


def test_a_producer_fenced_after_its_transaction_outlived_the_timeout_is_started_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker aborts a transaction open past transaction.timeout.ms and bumps the
    producer's epoch: librdkafka then says fenced, fatally. With no newer instance to
    yield to, the trainer exited 1 (a reliability run on a loaded host: a commit after
    a partial produce failure waited out the test's 8 s timeout)."""
    fenced, fresh = _Txn(FENCED), _Txn()
    outcomes, raw = _publish(monkeypatch, [fenced, fresh], timeout_ms="0", batches=2)
    assert outcomes == [TxnOutcome.ABORTED, TxnOutcome.COMMITTED]
    assert raw.seeks == [("in", 0, 5)]  # the batch is read again from the committed offset
    assert fenced.calls == ["init", "commit", "purge"] and fresh.calls == ["init", "commit"]


class _FatalAtProduce(_Txn):
    """produce() answers _FATAL, as librdkafka's does after a fatal error; the
    transactional calls answer the error itself (`cause`)."""

    def __init__(self, cause: KafkaError) -> None:
        super().__init__()
        self.cause = cause

    def produce(self, *_: Any, **__: Any) -> None:
        self.calls.append("produce")
        raise KafkaException(KafkaError(KafkaError._FATAL, "fatal", fatal=True))  # noqa: SLF001

    def abort_transaction(self, *_: Any) -> None:
        self.calls.append("abort")
        raise KafkaException(self.cause)


def test_a_fence_behind_a_fatal_produce_starts_the_producer_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fenced, fresh = _FatalAtProduce(FENCED), _Txn()
    outcomes, raw = _publish(monkeypatch, [fenced, fresh], timeout_ms="0", batches=2)
    assert outcomes == [TxnOutcome.ABORTED, TxnOutcome.COMMITTED]
    assert raw.seeks == [("in", 0, 5)]


def test_another_fatal_error_behind_a_fatal_produce_still_stops_the_trainer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from stream_app.kafka.exceptions import FatalTransactionError

    other = KafkaError(KafkaError.INVALID_TRANSACTION_TIMEOUT, "bad", fatal=True)
    with pytest.raises(FatalTransactionError, match="bad"):
        _publish(monkeypatch, [_FatalAtProduce(other), _Txn()], timeout_ms="0", batches=1)


@pytest.mark.parametrize(("error", "timeout_ms"), [
    (FENCED, "60000"),  # within the timeout: a newer instance has our transactional.id
    (KafkaError(KafkaError._FATAL, "fatal idempotence error", fatal=True), "0"),  # noqa: SLF001
])
def test_a_producer_fenced_by_a_newer_instance_or_failed_otherwise_still_stops_the_trainer(
        monkeypatch: pytest.MonkeyPatch, error: KafkaError, timeout_ms: str) -> None:
    from stream_app.kafka.exceptions import FatalTransactionError

    with pytest.raises(FatalTransactionError):
        _publish(monkeypatch, [_Txn(error), _Txn()], timeout_ms=timeout_ms, batches=1)
