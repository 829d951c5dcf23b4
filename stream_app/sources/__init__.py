"""Pure readers and generators of input events: no Kafka here.

Each yields `Event`s (already validated by the codec) or `RawRecord`s (the
exact key/value bytes a producer would send, malformed ones included).
"""

from __future__ import annotations

from stream_app.sources.records import RawRecord, SourceError, to_record

__all__ = ["RawRecord", "SourceError", "to_record"]
