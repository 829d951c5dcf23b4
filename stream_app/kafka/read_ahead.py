"""`ReadAhead`: iterate a Kafka read on a thread while the caller decodes what it read.

Reading a topic mostly waits on the broker (a plain read of 200K changelog
rows used a quarter of a core), and decoding is CPU work, so the two overlap:
the trainer's restore and the scorer's initial load both read this way.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _End:
    """The last item the thread queues: how the read ended."""

    error: BaseException | None


class ReadAhead(Generic[T]):
    """Iterates `items` on a thread, keeping up to `depth` of them ready.

    Empty (falsy) items are skipped, but the thread sees each of them, so a
    read that keeps waiting can still be stopped. `stop()` ends the thread
    between two items and closes `items` (a generator's `finally` runs on the
    thread that iterated it).

    >>> ahead = ReadAhead(iter([[1], [], [2, 3]]), depth=2, name="doc")
    >>> list(ahead), ahead.stop()
    ([[1], [2, 3]], [])
    """

    def __init__(self, items: Iterator[T], *, depth: int, name: str) -> None:
        self._items = items
        self._ready: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[T]:
        """Every item, blocking for each; the thread's error, if any, is raised at the end."""
        while not isinstance(item := self._ready.get(), _End):
            yield item
        if item.error is not None:
            raise item.error

    def get(self, timeout_s: float) -> T | None:
        """The next item, or None if none came within `timeout_s`; raises the thread's
        error, and `EOFError` where `items` ended."""
        try:
            item = self._ready.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, _End):
            raise item.error if item.error is not None else EOFError("read ahead: items ended")
        return item

    def stop(self) -> list[T]:
        """Stop the thread; the items it had read and nobody took, in order."""
        self._stop.set()
        self._thread.join()
        left: list[T] = []
        while True:
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                return left
            if not isinstance(item, _End):
                left.append(item)
            elif item.error is not None:
                log.warning("%s failed after it was stopped: %s", self._thread.name, item.error)

    def _read(self) -> None:
        end = _End(None)
        try:
            for item in self._items:
                if self._stop.is_set():
                    break
                if item and not self._put(item):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            end = _End(exc)
        close = getattr(self._items, "close", None)
        try:
            if close is not None:
                close()
        except Exception as exc:  # noqa: BLE001 - the read's own end is what counts
            log.warning("%s: closing the read failed: %s", self._thread.name, exc)
        self._put(end)

    def _put(self, item: T | _End) -> bool:
        """Queue `item` unless stopped meanwhile (a full queue blocks in slices)."""
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
