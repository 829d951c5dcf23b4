"""The one transaction function: publish a batch's output and its input offsets atomically.

This is what "nothing lost, nothing applied twice" rests on (DESIGN.md,
Semantics): the rows a batch changed, its dead-letter records and the consumed
offsets become visible to `read_committed` readers together, or not at all.

Error branches, all here (confluent-kafka docs, "Transactional producer API"):
- retriable (`err.retriable()`): the same call is retried until the deadline;
- abortable (`err.txn_requires_abort()`): abort, rewind the consumer to its
  committed offsets, and tell the caller, who must roll its own state back;
- anything else (fenced by a newer instance with our transactional.id, fatal
  producer error): `FatalTransactionError`; the process must stop. One
  exception: fenced in a transaction older than `transaction.timeout.ms`, which
  the broker aborted itself, bumping the producer's epoch (a commit that waited
  out a broker, a slow host); `TransactionalPublisher` then starts a new
  producer and the batch counts as aborted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from stream_app.config import KafkaConfig
from stream_app.events import Headers
from stream_app.kafka.clients import TRANSACTIONAL_DEFAULTS, make_producer, ms_setting
from stream_app.kafka.consumer import GroupConsumer
from stream_app.kafka.exceptions import BrokerUnavailable, FatalTransactionError
from stream_app.kafka.records import Partition

log = logging.getLogger(__name__)

T = TypeVar("T")


class TxnOutcome(StrEnum):
    COMMITTED = "committed"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to produce inside the transaction. `value=None` is a tombstone."""

    topic: str
    key: bytes
    value: bytes | None
    headers: Headers = ()


class SpotCheck:
    """Where librdkafka put the first record of `topic` in a transaction.

    The trainer counts its own writes per partition by computing each key's
    partition (`kafka.partitioners.consistent_random`, librdkafka's default
    partitioner) rather than asking for a delivery report per record, which
    cost 5-7% of its ingest rate; one report per transaction checks the
    computation.
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.key: bytes | None = None
        self.partition: int | None = None

    def report(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.partition = msg.partition()


class AbortRequired(Exception):  # noqa: N818 - a signal inside this module, not an error
    """Raised internally when the batch must be given up: `by_broker` when librdkafka
    says the open transaction must be aborted, else a step still failing at its deadline."""

    def __init__(self, message: str, *, by_broker: bool = False) -> None:
        super().__init__(message)
        self.by_broker = by_broker


STEP_TIMEOUT_S = 60.0
"""How long a transaction's begin and offsets steps retry a broker that is away before
the batch is given up (aborted, then tried again), and `init_transactions` waits."""

_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED,  # noqa: SLF001
                     KafkaError.INVALID_PRODUCER_EPOCH})
"""How librdkafka and the broker say a producer's epoch is stale."""

_MUST_FINISH = ("commit", "abort")
"""Steps that are never given up: once a commit or an abort has started, only
finishing it tells us what the broker did, so they are retried (the broker may
be away for a while) until they succeed, need an abort, or fail fatally."""


def _call(step: str, fn: Callable[[], T], deadline: float) -> T:
    """Run one transactional API call; see the module docstring for the branches.

    A non-fatal error that is not abortable (retriable, or a local timeout while
    the broker is away) is retried until `deadline`; after it, begin and
    send_offsets give the batch up (abort path) rather than stop the trainer.
    """
    while True:
        try:
            return fn()
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.fatal():
                raise FatalTransactionError(
                    f"transaction step {step} failed fatally ({err.name()}: {err.str()}); "
                    "another instance with the same transactional.id may have fenced this one"
                ) from exc
            if err.txn_requires_abort() and step != "abort":
                raise AbortRequired(f"{step}: {err.str()}", by_broker=True) from exc
            if time.monotonic() < deadline or step in _MUST_FINISH:
                log.warning("transaction step=%s error=%s retriable=%s; retrying", step,
                            err.str(), err.retriable())
                time.sleep(0.5)
                continue
            raise AbortRequired(f"{step}: {err.str()} (still failing after the deadline)") \
                from exc


def commit_batch(producer: Producer, consumer: Consumer, records: Iterable[OutRecord],
                 offsets: list[TopicPartition], *, starts: Mapping[Partition, int],
                 timeout_s: float = STEP_TIMEOUT_S, spot: SpotCheck | None = None) -> TxnOutcome:
    """Produce `records` and commit `offsets` (next offset to read) in one transaction.

    `starts`: the batch's first offset per partition, where an aborted batch is
    read again if its partition has no committed offset yet. `spot` learns
    the partition of the first record of its topic.
    """
    deadline = time.monotonic() + timeout_s
    # Step 1. Begin. Only one transaction is open at a time per producer. If
    # it cannot begin, nothing was produced: the producer is aborted only when
    # librdkafka says its state needs it (or every later begin fails the same).
    try:
        _call("begin", producer.begin_transaction, deadline)
    except AbortRequired as exc:
        log.warning("transaction not begun: %s; rewinding to committed offsets", exc)
        if exc.by_broker:
            _call("abort", lambda: producer.abort_transaction(timeout_s),
                  time.monotonic() + timeout_s)
        rewind_to_committed(consumer, offsets, starts)
        return TxnOutcome.ABORTED
    try:
        # Step 2. Produce. poll(0) serves delivery reports so the local queue
        # never fills; on BufferError we flush and retry that one record.
        for rec in records:
            if spot is not None and spot.key is None and rec.topic == spot.topic:
                spot.key = rec.key
                _produce(producer, rec, spot.report)
            else:
                _produce(producer, rec)
        # Step 3. Send the input offsets inside the transaction, so they commit
        # exactly when the output does. Group metadata makes a zombie fenced.
        meta = consumer.consumer_group_metadata()
        _call("send_offsets", lambda: producer.send_offsets_to_transaction(
            offsets, meta, max(1.0, deadline - time.monotonic())), deadline)
        # Step 4. Commit: flushes outstanding records first, then marks the
        # transaction committed on every partition it touched.
        _call("commit", lambda: producer.commit_transaction(
            max(1.0, deadline - time.monotonic())), deadline)
        producer.poll(0)  # delivery reports the commit's flush left unserved
        return TxnOutcome.COMMITTED
    except AbortRequired as exc:
        log.warning("transaction aborted: %s; rewinding to committed offsets", exc)
        # Abort path. Nothing of this batch becomes visible; the consumer goes
        # back to the last committed offsets so the batch is read again.
        _call("abort", lambda: producer.abort_transaction(timeout_s), time.monotonic() + timeout_s)
        rewind_to_committed(consumer, offsets, starts)
        return TxnOutcome.ABORTED


def _produce(producer: Producer, rec: OutRecord,
             on_delivery: Callable[[KafkaError | None, Message], None] | None = None) -> None:
    while True:
        try:
            producer.produce(rec.topic, key=rec.key, value=rec.value,
                             headers=list(rec.headers) or None, on_delivery=on_delivery)
            producer.poll(0)
            return
        except BufferError:
            producer.poll(0.05)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            # Once a record of the transaction failed delivery (a topic refusing its size,
            # say), librdkafka's produce() answers _STATE without txn_requires_abort: the
            # transaction must abort all the same. Taken for fatal, a batch of 2,000+ rows
            # stopped the trainer (exit 1) where a smaller one aborted at its commit.
            if err.txn_requires_abort() or (err.code() == KafkaError._STATE  # noqa: SLF001
                                            and not err.fatal()):
                raise AbortRequired(f"produce: {err.str()}", by_broker=True) from exc
            cause = _fatal_cause(producer, exc)
            raise FatalTransactionError(f"produce to {rec.topic} failed: "
                                        f"{cause.args[0].str()}") from cause


def _fatal_cause(producer: Producer, exc: KafkaException) -> KafkaException:
    """The error behind produce()'s `_FATAL`: librdkafka's produce() answers that code once
    the producer failed fatally, while its transactional calls answer the failure itself.
    A fence by the broker after a transaction outlived its timeout (a broker away that
    long while produce() waited for room) thus read as an unknown fatal error: the trainer
    exited 1 instead of starting its producer again (exactly-once review)."""
    if exc.args[0].code() != KafkaError._FATAL:  # noqa: SLF001
        return exc
    try:
        producer.abort_transaction(1.0)
    except KafkaException as real:
        return real
    return exc


REWIND_TRIES = 3
"""How often the abort path asks for the committed offsets before it rewinds to the
batch's first offsets instead."""


def rewind_to_committed(consumer: Consumer, partitions: list[TopicPartition],
                        starts: Mapping[Partition, int]) -> None:
    """Seek each partition back to its committed offset, or, with none (a new group, a
    new partition) or an error for it or for the whole request, to the batch's first
    offset in `starts`.

    Not to offset 0: with `auto.offset.reset=latest` that replayed history the
    operator chose to skip, or, retention having deleted offset 0, reset to the
    end and lost the batch and all produced since.
    """
    if not partitions:
        return
    asked = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
    for attempt in range(REWIND_TRIES):
        try:
            committed = consumer.committed(asked, timeout=30)
            break
        except KafkaException as exc:
            # A coordinator moving (NOT_COORDINATOR) raised out of the abort path. The
            # batch began where the last commit left each partition: its starts serve.
            log.warning("committed offsets unreadable (%s)%s", exc.args[0].str(),
                        "; retrying" if attempt + 1 < REWIND_TRIES
                        else ": rewinding to the batch's first offsets")
            committed = asked  # offset -1 each: `starts` below
            time.sleep(1.0 if attempt + 1 < REWIND_TRIES else 0.0)
    for tp in committed:
        offset = tp.offset
        if offset < 0 or tp.error is not None:
            offset = starts.get((tp.topic, tp.partition), -1)
        if offset < 0:
            log.error("no committed offset and no batch start for %s[%d]; left where it is",
                      tp.topic, tp.partition)
            continue
        try:
            consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            # Revoked meanwhile: its new owner starts from the committed offset anyway.
            # Still ours: reading on would skip the aborted batch, whose events were
            # neither applied nor dead-lettered; a restart reads from the commit.
            if any((a.topic, a.partition) == (tp.topic, tp.partition)
                   for a in consumer.assignment()):
                raise FatalTransactionError(
                    f"cannot rewind {tp.topic}[{tp.partition}] to offset {offset} after an "
                    f"abort ({exc}): exiting so a restart reads from the committed "
                    "offsets") from exc
            log.warning("seek %s[%d] failed, revoked meanwhile: %s", tp.topic, tp.partition,
                        exc)


class TransactionalPublisher:
    """The trainer's producer: one stable `transactional.id` per instance.

    `init_transactions` fences any zombie with the same id and aborts what it
    left open, so a restarted trainer never sees half a batch.
    """

    def __init__(self, kafka: KafkaConfig, *, transactional_id: str, client_id: str,
                 timeout_s: float = STEP_TIMEOUT_S) -> None:
        self._kafka, self._id, self._client_id = kafka, transactional_id, client_id
        self._timeout_s = timeout_s
        self._txn_timeout_s = ms_setting(kafka, "transaction.timeout.ms",
                                         TRANSACTIONAL_DEFAULTS["transaction.timeout.ms"]) / 1000
        self._failed = False
        self.renewals = 0
        """Producers started again after the broker timed out a transaction (see `commit`)."""
        self.spot: tuple[bytes, int] | None = None
        """Key and partition of the first record of `spot_topic` in the last
        transaction, when it committed and its delivery was reported; else None."""
        self._producer = self._start()

    def _start(self) -> Producer:
        """A producer with our transactional.id, its transactions initialised: any zombie
        with the id is fenced and what it left open aborted."""
        producer = make_producer(self._kafka, self._client_id, transactional_id=self._id)
        try:
            producer.init_transactions(self._timeout_s)
        except KafkaException as exc:
            if exc.args[0].retriable():  # no coordinator yet, a broker bouncing: try later
                raise BrokerUnavailable(
                    f"init_transactions for transactional.id={self._id} did not "
                    f"finish in {self._timeout_s:.0f} s: {exc.args[0].str()}; stopping "
                    "(exit 75): a restart tries again") from exc
            raise FatalTransactionError(
                f"init_transactions for transactional.id={self._id} failed: "
                f"{exc.args[0].str()}; check the broker is reachable and the credentials "
                "allow transactions"
            ) from exc
        return producer

    def commit(self, consumer: GroupConsumer, records: Iterable[OutRecord],
               offsets: dict[Partition, int], starts: Mapping[Partition, int], *,
               spot_topic: str | None = None) -> TxnOutcome:
        """`offsets`: next offsets to read; `starts`: the batch's first offsets. Sets
        `spot` for `spot_topic`."""
        tps = [TopicPartition(t, p, off) for (t, p), off in offsets.items()]
        spot = None if spot_topic is None else SpotCheck(spot_topic)
        begun = time.monotonic()
        try:
            outcome = commit_batch(self._producer, consumer.raw, records, tps, starts=starts,
                                   timeout_s=self._timeout_s, spot=spot)
        except FatalTransactionError as exc:
            self._failed = True  # nothing it holds can be delivered: `close` skips the flush
            if not (_fenced(exc) and time.monotonic() - begun >= self._txn_timeout_s):
                raise
            self._renew(exc, time.monotonic() - begun)
            rewind_to_committed(consumer.raw, tps, starts)
            outcome = TxnOutcome.ABORTED
        self.spot = None
        if (outcome is TxnOutcome.COMMITTED and spot is not None and spot.key is not None
                and spot.partition is not None):
            self.spot = (spot.key, spot.partition)
        if outcome is TxnOutcome.ABORTED:
            # Rewound to the committed offsets: what was queued after the batch
            # will be fetched again.
            consumer.discard_queued(offsets)
        return outcome

    def _renew(self, exc: FatalTransactionError, open_s: float) -> None:
        """Start a new producer in place of one the broker fenced after timing out its
        transaction. Not done on a fencing within the timeout: that is a newer instance
        with our id, which a new producer would fence in turn. Time alone cannot tell the
        two apart: a zombie paused past the timeout while its replacement started renews
        too and fences the replacement, which exits 1 at its next commit; the group
        generation on `send_offsets` keeps the zombie's batches out all the same."""
        log.warning("transaction open %.1f s, past transaction.timeout.ms (%.0f s): the "
                    "broker aborted it and fenced this producer (%s); starting a new one "
                    "and reading the batch again", open_s, self._txn_timeout_s, exc)
        old, self._producer = self._producer, self._start()
        self._failed = False
        self.renewals += 1
        try:  # its queue is lost: what it held was in the aborted transaction
            old.purge(in_queue=True, in_flight=True, blocking=False)
        except KafkaException as err:
            log.debug("purging the fenced producer: %s", err)

    def serve(self) -> None:
        """Serve the producer's callbacks between transactions: its error and librdkafka
        log lines wait for a poll (`client_logs.ClientLog`), and an idle trainer made none."""
        self._producer.poll(0)

    def close(self) -> None:
        """Flush what is queued. A fenced or failed producer cannot, and nothing it raises
        here may mask the error that stopped the loop (this runs in the loop's `finally`):
        a fenced producer's flush raised SystemError from a delivery callback ("returned a
        result with an exception set"), which replaced the fencing error (walkthrough)."""
        if self._failed:  # fenced or fatal: its queue is lost, and its callbacks misbehave
            log.info("producer close: not flushed after a fatal transaction error")
            return
        try:
            self._producer.flush(self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("producer close: %s", exc.args[0].str()
                        if isinstance(exc, KafkaException) else f"{type(exc).__name__}: {exc}")


def _fenced(exc: FatalTransactionError) -> bool:
    """Whether librdkafka's error behind `exc` says the producer's epoch is stale."""
    cause = exc.__cause__
    return (isinstance(cause, KafkaException) and isinstance(cause.args[0], KafkaError)
            and cause.args[0].code() in _FENCED)
