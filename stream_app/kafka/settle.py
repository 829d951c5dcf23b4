"""A new owner's wait for a previous owner's open transaction on its partitions (KIP-447),
before a rebalance restore reads the changelog's ends."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as _TP

from stream_app.kafka.exceptions import BrokerError, KafkaEdgeError
from stream_app.kafka.records import Partition

log = logging.getLogger(__name__)


def settle(consumer: Consumer, parts: list[Partition], timeout_s: float,
           on_wait: Callable[[], None]) -> None:
    """Wait until no open transaction holds offsets for `parts`.

    `committed()` of a read_committed consumer asks for stable offsets, and
    librdkafka asks again while the broker answers UNSTABLE_OFFSET_COMMIT.
    A previous owner whose offsets were sent in a transaction still open
    (dropped from the group between its send_offsets and its commit) has
    its rows in the changelog once this returns; the end offsets read after
    it include them. A timeout (a dead owner's transaction, which the broker
    aborts after `transaction.timeout.ms`) is logged and left. Any other
    error raises KafkaEdgeError: going on could restore without the previous
    owner's last rows while its offsets commit, and we would publish stale
    rows over its work (logged and left, it did, until 2026-12-07).
    `on_wait` runs every SETTLE_STEP_S of the wait (the stall watchdog's beat).
    """
    try:
        got = committed_within(consumer, [_TP(t, p) for t, p in parts], timeout_s, on_wait)
    except KafkaException as exc:
        _unsettled(exc.args[0], f"{parts}", timeout_s)
        return
    for tp in got:
        if tp.error is not None:
            _unsettled(tp.error, f"{tp.topic}[{tp.partition}]", timeout_s)


SETTLE_STEP_S = 5.0
"""The longest single wait of `committed_within` between two `on_wait` calls."""


def _unsettled(err: KafkaError, what: str, timeout_s: float) -> None:
    """Log a wait that ran out; raise on any other error of `settle`: BrokerError (exit 2,
    an operator must grant access) when the broker refuses us, else KafkaEdgeError."""
    if err.code() in _UNSETTLED:
        log.warning("committed offsets of %s not settled within %.0f s: %s", what, timeout_s,
                    err.str())
        return
    if err.code() in _REFUSED:
        raise BrokerError(f"the broker refuses to give the committed offsets of {what} "
                          f"({err.str()}): grant this client's principal Describe on the "
                          "consumer group and the input topics")
    raise KafkaEdgeError(f"cannot read the committed offsets of {what}: {err.str()}")


_REFUSED = frozenset({KafkaError.GROUP_AUTHORIZATION_FAILED,
                      KafkaError.TOPIC_AUTHORIZATION_FAILED,
                      KafkaError._AUTHENTICATION})  # noqa: SLF001
"""Errors no wait or restart outlasts."""


def committed_within(consumer: Consumer, parts: list[_TP], timeout_s: float,
                     on_wait: Callable[[], None]) -> list[_TP]:
    """`consumer.committed(parts)`, asked in waits of at most SETTLE_STEP_S until
    `timeout_s`, calling `on_wait` between them; KafkaException as `committed` raises it.

    One call of up to the whole timeout (the transaction timeout + 30 s) gave the
    stall watchdog no beat: with `-X transaction.timeout.ms` past ~90 s it took a
    takeover's wait for a hung trainer. A coordinator moving or a broker bouncing
    (`_PASSING`, in the call's error or a partition's) is asked again too, until
    the deadline; librdkafka flags none of them retriable here.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            got = list(consumer.committed(parts, timeout=max(0.1, min(left, SETTLE_STEP_S))))
        except KafkaException as exc:
            code = exc.args[0].code()
            if code not in _PASSING or left <= SETTLE_STEP_S:
                raise
        else:
            codes = {tp.error.code() for tp in got if tp.error is not None}
            if left <= SETTLE_STEP_S or not codes or not codes <= _PASSING:
                return got
            code = min(codes)
        on_wait()
        if code not in _UNSETTLED:  # answered at once: do not spin on it
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


_PASSING = frozenset({
    KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,  # noqa: SLF001
    KafkaError._WAIT_COORD, KafkaError.COORDINATOR_NOT_AVAILABLE,  # noqa: SLF001
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.UNSTABLE_OFFSET_COMMIT,
})
"""Errors of `committed` that a wait can outlast: the group coordinator moving or
loading, a broker bouncing, offsets held by an open transaction."""

_UNSETTLED = frozenset({KafkaError._TIMED_OUT, KafkaError.UNSTABLE_OFFSET_COMMIT})  # noqa: SLF001
"""Of those, the ones that mean a transaction still holds the offsets (asked with a wait)."""
