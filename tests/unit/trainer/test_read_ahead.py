"""`_read_ahead`: the restore's reader thread hands chunks over in order, raises its
errors in the caller and always closes what it reads."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from contextlib import closing
from types import SimpleNamespace

import pytest

from stream_app.trainer import restore
from stream_app.trainer.restore import _read_ahead


class Source:
    """A generator of `n` chunks that records whether it was closed and on which thread."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.closed = threading.Event()
        self.threads: set[str] = set()
        self.read = 0

    def chunks(self) -> Generator[list[int], None, None]:
        try:
            for k in range(self.n):
                self.threads.add(threading.current_thread().name)
                if k == self.fail_at:
                    raise ValueError(f"broken at {k}")
                self.read += 1
                yield [k]
        finally:
            self.closed.set()


def reader_alive() -> bool:
    return any(t.name == "changelog-reader" for t in threading.enumerate())


def test_all_chunks_in_order_read_on_another_thread() -> None:
    src = Source(50)
    assert [c[0] for c in _read_ahead(src.chunks(), depth=2)] == list(range(50))
    assert src.closed.is_set() and src.threads == {"changelog-reader"}
    assert not reader_alive()


def test_an_error_of_the_reader_is_raised_in_the_caller_after_the_chunks_before_it() -> None:
    src = Source(10, fail_at=4)
    got: list[int] = []
    with pytest.raises(ValueError, match="broken at 4"):
        for chunk in _read_ahead(src.chunks(), depth=2):
            got += chunk
    assert got == [0, 1, 2, 3] and src.closed.is_set() and not reader_alive()


def test_closing_it_early_stops_the_reader_and_closes_the_source() -> None:
    src = Source(1_000_000)
    with pytest.raises(RuntimeError), closing(_read_ahead(src.chunks(), depth=2)) as ahead:
        for chunk in ahead:
            if chunk[0] == 3:
                raise RuntimeError("the caller failed")
    assert src.closed.is_set() and not reader_alive()
    assert src.read < 10  # the 4 handed out, `depth` queued, one more at most


def test_closing_it_while_the_read_waits_stops_between_empty_chunks() -> None:
    """`read_to_end` yields empty chunks while it waits (an open transaction): the
    reader must stop on them, or a caller's failure would wait out the read."""
    waits = 0

    def chunks() -> Generator[list[int], None, None]:
        nonlocal waits
        yield [1]
        while waits < 2_000:  # 10 s of waiting at most
            waits += 1
            time.sleep(0.005)
            yield []

    with pytest.raises(RuntimeError), closing(_read_ahead(chunks(), depth=2)) as ahead:
        for chunk in ahead:
            assert chunk  # the first empty chunk waits a second
            raise RuntimeError("the caller failed")
    assert waits < 2_000 and not reader_alive()


def test_a_waiting_read_hands_out_an_empty_chunk_each_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller beats the stall watchdog per chunk: while the read waited behind an
    open transaction (up to transaction.timeout.ms, which -X may raise past the
    watchdog's 120 s) none came, and the watchdog took the restore for a hung one.

    On a clock the chunks move, so the count is exact: with real sleeps a loaded
    machine stretched the wait and the count with it (test review)."""
    now_ms = 0
    monkeypatch.setattr(restore, "time", SimpleNamespace(monotonic=lambda: now_ms / 1000))

    def chunks() -> Generator[list[int], None, None]:
        nonlocal now_ms
        yield [1]
        for _ in range(500):  # 2.5 s of waiting
            now_ms += 5
            yield []
        yield [2]

    got = list(_read_ahead(chunks(), depth=2))
    assert got == [[1], [], [], [2]]  # one at 1 s and one at 2 s of the wait, not all 500
