"""What a consumed record is, once detached from librdkafka.

Only `to_record` touches a `confluent_kafka.Message` (and `read_to_end`, which
keeps just each record's key and value); everything downstream
(decoding, dead-lettering, offsets to commit) works on the frozen `RawRecord`,
which keeps the record's coordinates so a bad one can be dead-lettered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import Message

from stream_app.events import Coordinates, Headers

Partition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One consumed record, detached from librdkafka. `timestamp_ms` is the produce time."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: Headers = ()

    @property
    def coords(self) -> Coordinates:
        return Coordinates(topic=self.topic, partition=self.partition, offset=self.offset)

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


def to_record(msg: Message) -> RawRecord:
    """Runs once per consumed record: positional arguments, headers only when present."""
    ts_type, ts = msg.timestamp()
    headers = msg.headers()
    return RawRecord(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, msg.key(),
                     msg.value(), ts if ts_type else 0,
                     tuple((str(h[0]), _bytes(h[1])) for h in headers) if headers else ())


def _bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def first_offsets(records: Sequence[RawRecord]) -> dict[Partition, int]:
    """Per partition, the first offset of these records: where an aborted batch is read
    again when its partition has no committed offset to go back to."""
    out: dict[Partition, int] = {}
    for r in records:
        key = (r.topic, r.partition)
        out[key] = min(out.get(key, r.offset), r.offset)
    return out


def next_offsets(records: Sequence[RawRecord]) -> dict[Partition, int]:
    """Per partition, the offset to commit after these records (last offset + 1)."""
    out: dict[Partition, int] = {}
    for r in records:
        key = (r.topic, r.partition)
        out[key] = max(out.get(key, 0), r.offset + 1)
    return out
