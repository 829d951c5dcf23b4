"""Plain (non-transactional, idempotent) producing of events and requests.

Used by `replay`, `generate` and the request client: each record is keyed so
one user's events stay ordered in one partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream_app.config import KafkaConfig
from stream_app.events import Headers
from stream_app.kafka.clients import DURABLE_PRODUCER, check_user_partitioner, make_producer
from stream_app.kafka.exceptions import KafkaEdgeError


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


def produce_waiting(producer: Producer, rec: Outgoing,
                    on_delivery: Callable[[KafkaError | None, Message], None]) -> None:
    """`produce`, waiting while librdkafka's local queue is full instead of raising
    BufferError: a caller that sends faster than the broker takes slows down to it."""
    while True:
        try:
            producer.produce(rec.topic, key=rec.key, value=rec.value,
                             headers=list(rec.headers) or None, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.05)


class Pacer:
    """Spaces sends to `rate` per second (0 = unpaced), without drifting.

    The clock starts at the first send, not when the pacer is made: reading a
    source may take a while before its first record (MovieLens is sorted in
    memory first), and that time is no send to catch up on. After a stall (a
    full producer queue, a slow source) it catches up by at most `burst_s`
    seconds' worth of records, then goes on at `rate` from there.
    """

    def __init__(self, rate: float, burst_s: float = 1.0) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self._start: float | None = None
        self._sent = 0

    def wait(self) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        if self._start is None:
            self._start = now
        ahead = self._sent / self.rate - (now - self._start)  # record n goes at n / rate
        self._sent += 1
        if ahead < -self.burst_s:
            self._start -= ahead + self.burst_s  # forget the stall beyond one burst
            ahead = -self.burst_s
        if ahead > 0:
            time.sleep(ahead)


_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)  # noqa: SLF001


class DeliveryError(KafkaEdgeError):
    """At least one record was not acknowledged by the broker."""


class TimedOut(DeliveryError):
    """A record timed out undelivered (no broker took it): `send_all` stops there."""


def check_event_settings(kafka: KafkaConfig) -> None:
    """Refuse librdkafka settings an `EventProducer` cannot run with (`ConfigError`), without
    a broker: called before the broker check, they read as "no broker" (exit 75) after it."""
    check_user_partitioner(kafka.client)
    make_producer(kafka, "check", enforce=DURABLE_PRODUCER)


class EventProducer:
    """Produce records and count broker acknowledgements; `close()` flushes."""

    def __init__(self, kafka: KafkaConfig, client_id: str = "stream-app-producer") -> None:
        check_user_partitioner(kafka.client)
        self._producer: Producer = make_producer(kafka, client_id, enforce=DURABLE_PRODUCER)
        self.acked = 0
        self.refused = 0  # the broker answered no (too large, not authorised ...)
        self.expired = 0  # waited out message.timeout.ms: no broker took them
        self.dropped = 0  # still queued when a stopped producer gave up on them
        self.first_errors: list[str] = []  # of the refusals

    @property
    def timed_out(self) -> bool:
        return self.expired > 0

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.acked += 1
            return
        if err.code() in _PURGED:
            return  # dropped by `abandon`, and counted there
        if err.code() == KafkaError._MSG_TIMED_OUT:  # noqa: SLF001
            self.expired += 1  # no answer at all: "refused by the broker" misled
            return
        self.refused += 1
        if len(self.first_errors) < 10 and err.str() not in self.first_errors:
            self.first_errors.append(err.str())

    def send(self, rec: Outgoing) -> None:
        try:
            produce_waiting(self._producer, rec, self._on_delivery)
        except KafkaException as exc:
            raise DeliveryError(f"produce to {rec.topic} failed: {exc}") from exc
        self._producer.poll(0)

    def send_all(self, records: Iterable[Outgoing], rate: float = 0.0) -> Iterator[int]:
        """Send every record, paced; yields the running count for progress display. Stops
        (`TimedOut`) once a record timed out undelivered: with the broker gone, a replay went
        on through the whole file, each full local queue waiting out message.timeout.ms (5
        minutes), for hours. A record the broker refuses (too large) is counted, and the
        rest go on."""
        pacer = Pacer(rate)
        for n, rec in enumerate(records, 1):
            pacer.wait()
            self.send(rec)
            if self.timed_out:
                raise TimedOut(f"a record was not delivered within message.timeout.ms (is the "
                               f"broker up?); stopped after sending {n}")
            yield n

    def close(self, timeout_s: float = 60.0) -> None:
        """Wait up to `timeout_s` for every acknowledgement; what is still queued then is
        dropped and counted here, so the error names each lost record once."""
        self._producer.flush(timeout_s)
        left = self._drop_queued()
        counts = {"refused by the broker": self.refused,
                  "timed out with no broker taking them": self.expired,
                  f"unacknowledged after {timeout_s:g}s and dropped (some may have been "
                  "written)": left}
        if any(counts.values()):
            first = f"; first errors: {self.first_errors}" if self.first_errors else ""
            raise DeliveryError(
                f"{sum(counts.values())} record(s) not delivered ("
                f"{', '.join(f'{n} {what}' for what, n in counts.items() if n)}){first}")

    def abandon(self, timeout_s: float = 5.0) -> int:
        """Stopped early: deliver what the broker takes within `timeout_s`, drop the rest
        (added to `dropped`, and returned), and raise nothing, so the reason for stopping
        stays the error. A second Ctrl-C during the wait cuts it short; what is left is
        still dropped and counted (it was neither delivered nor reported)."""
        try:
            self._producer.flush(timeout_s)
        finally:
            left = self._drop_queued()
        return left

    def _drop_queued(self) -> int:
        # len() also counts what waits in the report queue (acknowledgements, error events:
        # 14 for 5 queued records after 2 s without a broker, tried here); an interrupted
        # flush leaves them there. Served first, an acknowledged record counts as acked.
        self._producer.poll(0)
        left = len(self._producer)
        if left:
            self._producer.purge()
            self._producer.poll(0)  # the purge's reports; `_on_delivery` leaves them to us
        self.dropped += left
        return left

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.abandon()
            return
        try:
            self.close()
        except BaseException:  # interrupted (or refused) during the final flush
            self.abandon(timeout_s=0)
            raise
