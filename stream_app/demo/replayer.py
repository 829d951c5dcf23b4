"""Replay the demo's records in a background thread, counting as it goes.

The display needs the count while the replay runs, and Ctrl-C must be able to
cut it short: the records pass through a generator that counts them and stops
yielding once `stop()` is called, so `produce_records` flushes what it has
sent and returns normally (no half-open producer left behind).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from stream_app.config import KafkaConfig
from stream_app.replay import produce_records
from stream_app.sources import RawRecord


class Replayer:
    """`start()` produces `records` at full speed; `sent`, `done` and `acked` report progress."""

    def __init__(self, kafka: KafkaConfig, records: Sequence[RawRecord]) -> None:
        self.kafka, self.records = kafka, records
        self.total = len(records)
        self.sent = 0
        self.acked = 0
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="demo-replay", daemon=True)

    @property
    def done(self) -> bool:
        """Every record was acknowledged by the broker (not merely handed over)."""
        return self._finished.is_set() and self._error is None and not self._stop.is_set()

    def _counted(self) -> Iterator[RawRecord]:
        for rec in self.records:
            if self._stop.is_set():
                return
            yield rec
            self.sent += 1

    def _run(self) -> None:
        try:
            self.acked = produce_records(self.kafka, self._counted(), total=self.total, rate=0.0,
                                         progress=False, label="demo")
        except Exception as exc:  # noqa: BLE001  handed to the main thread by raise_error:
            self._error = exc  # any failure, or `done` would call a partial replay finished
        finally:
            self._finished.set()

    def start(self) -> None:
        self._thread.start()

    def raise_error(self) -> None:
        """Re-raise in the caller's thread what made the replay fail, if anything."""
        if self._error is not None:
            raise self._error

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
