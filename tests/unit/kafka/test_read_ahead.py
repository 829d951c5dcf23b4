"""`ReadAhead`: its thread hands items over in order, raises its errors in the caller,
always closes what it reads, and stops cleanly (the restore's and the scorer's load)."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator

import pytest

from stream_app.kafka.read_ahead import ReadAhead

NAME = "test-reader"


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
                yield [k] if k % 3 else []  # empty ones are not handed out
        finally:
            self.closed.set()


def reader_alive() -> bool:
    return any(t.name == NAME for t in threading.enumerate())


def test_all_chunks_in_order_read_on_another_thread() -> None:
    src = Source(50)
    ahead = ReadAhead(src.chunks(), depth=2, name=NAME)
    assert [c[0] for c in ahead] == [k for k in range(50) if k % 3]
    assert ahead.stop() == []
    assert src.closed.is_set() and src.threads == {NAME}
    assert not reader_alive()


def test_an_error_of_the_reader_is_raised_in_the_caller_after_the_chunks_before_it() -> None:
    src = Source(10, fail_at=5)
    ahead = ReadAhead(src.chunks(), depth=2, name=NAME)
    got: list[int] = []
    with pytest.raises(ValueError, match="broken at 5"):
        for chunk in ahead:
            got += chunk
    ahead.stop()
    assert got == [1, 2, 4] and src.closed.is_set() and not reader_alive()
    again = ReadAhead(Source(1, fail_at=0).chunks(), depth=2, name=NAME)
    with pytest.raises(ValueError, match="broken at 0"):
        again.get(5.0)
    again.stop()


def test_stopping_early_stops_the_reader_closes_the_source_and_hands_back_the_rest() -> None:
    src = Source(1_000_000)
    ahead = ReadAhead(src.chunks(), depth=2, name=NAME)
    got = [ahead.get(5.0), ahead.get(5.0)]
    left = ahead.stop()
    assert src.closed.is_set() and not reader_alive()
    assert got == [[1], [2]] and len(left) <= 2
    assert left == [[k] for k in (4, 5, 7, 8)[: len(left)]]  # in order, after the two
    assert src.read < 20  # those handed out, `depth` queued, one more at most


def test_stopping_while_the_read_waits_stops_between_empty_chunks() -> None:
    """`read_to_end` yields empty chunks while it waits (an open transaction), the
    scorer's tail empty polls: the reader must stop on them, or a caller's stop
    would wait out the read."""
    waits = 0

    def chunks() -> Generator[list[int], None, None]:
        nonlocal waits
        yield [1]
        while waits < 2_000:  # 10 s of waiting at most
            waits += 1
            time.sleep(0.005)
            yield []

    ahead = ReadAhead(chunks(), depth=2, name=NAME)
    assert ahead.get(5.0) == [1]
    assert ahead.stop() == []
    assert waits < 2_000 and not reader_alive()


def test_get_waits_at_most_its_timeout_and_says_when_items_ended() -> None:
    release = threading.Event()

    def slow() -> Iterator[list[int]]:
        release.wait(10)
        yield [1]

    ahead = ReadAhead(slow(), depth=1, name=NAME)
    assert ahead.get(0.05) is None
    release.set()
    assert ahead.get(5.0) == [1]
    with pytest.raises(EOFError):
        ahead.get(5.0)
    ahead.stop()
