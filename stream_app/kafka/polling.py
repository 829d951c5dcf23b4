"""Low-latency polling: wait for the first record only, then take what is already fetched.

`Consumer.consume(n, timeout)` returns when it has `n` messages *or* the
timeout expired, so on a trickle of requests it always waits the full timeout.
`poll_available` blocks only until one message is there and then drains the
local queue without waiting, so a lone request is handed out at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message

from stream_app.kafka.exceptions import KafkaEdgeError
from stream_app.kafka.records import Partition, RawRecord, to_record

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Polled:
    """One poll: the records; the partition-EOF positions seen ((topic, partition) ->
    offset; only with `enable.partition.eof`); and whether it emptied the local queue
    (fewer messages of any kind than asked for)."""

    records: list[RawRecord]
    eof: dict[Partition, int]
    drained: bool


def poll_available(consumer: Consumer, max_records: int, timeout_s: float, *,
                   on_first: Callable[[Message], None] | None = None) -> Polled:
    """Up to `max_records` records, blocking at most `timeout_s` for the first one.

    `on_first` sees the first message before the rest are taken: a rebalance
    may run in between (see `RequestConsumer.poll`). Non-fatal errors are
    logged; a fatal one raises `KafkaEdgeError`.
    """
    if max_records <= 0:
        return Polled([], {}, drained=False)
    first = consumer.poll(timeout_s)
    if first is None:
        return Polled([], {}, drained=True)
    if on_first is not None:
        on_first(first)
    msgs = [first]
    if max_records > 1:
        msgs.extend(consumer.consume(max_records - 1, timeout=0))
    records: list[RawRecord] = []
    eof: dict[Partition, int] = {}
    for msg in msgs:
        err = msg.error()
        if err is None:
            records.append(to_record(msg))
        elif err.code() == KafkaError._PARTITION_EOF:  # noqa: SLF001
            eof[(msg.topic() or "", msg.partition() or 0)] = msg.offset() or 0
        else:
            raise_if_fatal(err, msg)
    return Polled(records, eof, drained=len(msgs) < max_records)


def raise_if_fatal(err: KafkaError, msg: Message | None = None) -> None:
    """Raise a fatal client error as ours; log the rest (librdkafka retries them)."""
    if err.fatal():
        raise KafkaEdgeError(f"consumer failed fatally: {err.str()}")
    where = f" partition={msg.topic()}[{msg.partition()}]" if msg is not None else ""
    hint = ""
    if err.code() == KafkaError._MAX_POLL_EXCEEDED:  # noqa: SLF001
        hint = (" (the group dropped this member: what it had not committed is read again; "
                "a trainer takes fewer records a poll after it; if it stays slow, raise -X "
                "max.poll.interval.ms)")
    log.warning("consumer error code=%s%s reason=%s%s", err.name(), where, err.str(), hint)
