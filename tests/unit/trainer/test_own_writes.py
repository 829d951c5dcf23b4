"""Whether the changelog's end offsets are provably the learner's, without a broker."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stream_app.kafka.partitioners import consistent_random as partition_for
from stream_app.trainer.own_writes import OwnWrites

Ends = dict[int, int]
RESTORED = {0: 10, 1: 4}


def _after_one_commit() -> tuple[OwnWrites, Ends]:
    """Restored at {0: 10, 1: 4}, then one commit of one key: its record and marker."""
    own = OwnWrites({})
    own.restored(RESTORED)
    key = b"user:42"
    p = partition_for(key, 2)
    own.committed([key], (key, p))
    expected = dict(RESTORED)
    expected[p] += 2
    return own, expected


def _marker_pending(expected: Ends) -> Ends:
    return {p: e - 1 if e != RESTORED[p] else e for p, e in expected.items()}


def _reads(*answers: tuple[Ends, Ends]) -> tuple[Callable[[], tuple[Ends, Ends]], list[int]]:
    """A `read` giving `answers` in turn (the last one again), and its calls."""
    seen: list[int] = []

    def read() -> tuple[Ends, Ends]:
        seen.append(1)
        return answers[min(len(seen), len(answers)) - 1]
    return read, seen


def test_the_ends_are_proven_once_our_markers_land() -> None:
    own, expected = _after_one_commit()
    read, seen = _reads((_marker_pending(expected), RESTORED), (expected, expected))
    assert own.proven_ends(read, pause=lambda s: True) == expected
    assert len(seen) == 2


def test_a_foreign_record_gives_up_at_once(caplog: pytest.LogCaptureFixture) -> None:
    own, expected = _after_one_commit()
    foreign = {p: e + (1 if p == 0 else 0) for p, e in expected.items()}
    read, seen = _reads((foreign, foreign))
    assert own.proven_ends(read, pause=lambda s: True) is None
    assert len(seen) == 1 and "may hold rows this trainer did not write" in caplog.text


@pytest.mark.parametrize("short", [
    "a marker missing on a partition our last commit did not write",
    "two offsets missing where our commit put one marker",
])
def test_anything_but_our_last_markers_missing_gives_up_at_once(short: str) -> None:
    own, expected = _after_one_commit()
    written = next(p for p, e in expected.items() if e != RESTORED[p])
    other = 1 - written
    ends = dict(expected)
    if short.startswith("a marker"):
        ends[other] -= 1
    else:
        ends[written] -= 2
    read, seen = _reads((ends, ends))
    assert own.proven_ends(read, pause=lambda s: True) is None
    assert len(seen) == 1


def test_markers_that_never_land_or_a_stop_end_the_wait() -> None:
    own, expected = _after_one_commit()
    pending = _marker_pending(expected)
    read, seen = _reads((pending, RESTORED))
    assert own.proven_ends(read, pause=lambda s: True, wait_s=0.05) is None
    read, seen = _reads((pending, RESTORED))
    assert own.proven_ends(read, pause=lambda s: False) is None  # a stop
    assert len(seen) == 1


def test_nothing_is_proven_before_a_restore_or_after_a_forget() -> None:
    own = OwnWrites({})
    read, _ = _reads(({0: 1}, {0: 1}))
    assert own.proven_ends(read, pause=lambda s: True) is None
    own.restored({0: 1})
    assert own.proven_ends(read, pause=lambda s: True) == {0: 1}
    own.forget()
    assert own.proven_ends(read, pause=lambda s: True) is None


def test_only_the_last_commits_markers_may_be_missing() -> None:
    """Kafka writes a transaction's markers before the same producer's next transaction
    starts: after a second commit, the first's cannot be pending any more."""
    own = OwnWrites({})
    own.restored(RESTORED)
    keys = {partition_for(k, 2): k for k in (b"user:1", b"user:2", b"user:3", b"user:4")}
    own.committed([keys[0]], (keys[0], 0))
    own.committed([keys[1]], (keys[1], 1))
    expected = {0: RESTORED[0] + 2, 1: RESTORED[1] + 2}
    read, seen = _reads(({0: expected[0] - 1, 1: expected[1]}, RESTORED))
    assert own.proven_ends(read, pause=lambda s: True) is None
    assert len(seen) == 1
    own.committed([], None)  # a transaction that wrote nothing to the changelog
    read, _ = _reads((expected, expected))
    assert own.proven_ends(read, pause=lambda s: True) == expected
