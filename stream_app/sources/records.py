"""The raw record a source hands to a producer, and the error a bad file raises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stream_app.codec import DecodeError, DlqReason, encode_event, event_key
from stream_app.events import Event, EventKind


@dataclass(frozen=True, slots=True, kw_only=True)
class RawRecord:
    """Bytes for one topic record, as a producer would send them.

    `event` is the decoded event when the record is valid, None when it was
    made malformed on purpose; then `expected_reason` is the `DlqReason` the
    codec must give it (generators use this to check the DLQ end to end).
    """

    kind: EventKind
    key: bytes | None
    value: bytes | None
    event: Event | None = None
    expected_reason: DlqReason | None = None


def to_record(event: Event) -> RawRecord:
    """The valid record of `event`: key = user id, value = `encode_event`."""
    value = encode_event(event)  # first: its EncodeError names what is wrong with an id
    return RawRecord(kind=event.kind, key=event_key(event), value=value, event=event)


class SourceError(Exception):
    """A line of an input file is unusable; names the file and line, keeps the codec reason.

    `sent` is how many records the broker had acknowledged when the line
    stopped a replay (None: nothing was being sent), `dropped` how many queued
    ones were then given up unacknowledged, `refused` how many the broker had
    refused (with the first of its errors), `expired` how many timed out with no
    broker taking them. They need not be the records before
    the line: MovieLens is read whole and sorted first.
    """

    def __init__(self, path: Path, line: int, error: DecodeError | str) -> None:
        self.path = path
        self.line = line
        self.reason: DlqReason | None = error.reason if isinstance(error, DecodeError) else None
        self.sent: int | None = None
        self.dropped = 0
        self.refused = 0
        self.expired = 0
        self.first_refusal = ""
        super().__init__(f"{path}:{line}: {error}")
