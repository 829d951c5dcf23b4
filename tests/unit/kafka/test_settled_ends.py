"""`settled_ends`: the changelog's end once nothing below it is open or unmarked."""

from __future__ import annotations

from typing import Any

import pytest

from stream_app.kafka import ends as ends_module
from stream_app.kafka.ends import settled_ends

CALLS: list[str] = []


class _Watermarks:
    """Answers `of` from a list in turn (the last again), logging each call in CALLS."""

    def __init__(self, ends: list[dict[int, int]]) -> None:
        self.ends = ends

    def of(self, _topic: str) -> dict[int, int]:
        return _next_of(self.ends, "ends")


def _next_of(answers: list[dict[int, int]], name: str) -> dict[int, int]:
    CALLS.append(name)
    return answers[min(CALLS.count(name), len(answers)) - 1]


def _script(monkeypatch: pytest.MonkeyPatch, stable: list[dict[int, int]],
            ends: list[dict[int, int]]) -> tuple[list[str], Any]:
    """The stable offsets and the ends from the lists in turn; the log of their order."""
    CALLS.clear()
    monkeypatch.setattr(ends_module, "end_offsets",
                        lambda _c, _t, *a: _next_of(stable, "stable"))
    return CALLS, _Watermarks(ends)


def _settled(watermarks: Any, wait_s: float) -> dict[int, int]:
    fake: Any = object()
    return settled_ends(fake, watermarks, "t", wait_s=wait_s)


def test_waits_for_the_stable_offsets_to_reach_the_end_reading_them_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls, watermarks = _script(monkeypatch, stable=[{0: 9, 1: 4}, {0: 10, 1: 4}],
                                ends=[{0: 10, 1: 4}, {0: 10, 1: 4}])
    assert _settled(watermarks, 5.0) == {0: 10, 1: 4}
    assert calls == ["stable", "ends", "stable", "ends"]


def test_gives_the_end_as_it_is_after_the_wait_or_at_once_without_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls, watermarks = _script(monkeypatch, stable=[{0: 9}], ends=[{0: 10}])
    assert _settled(watermarks, 0.15) == {0: 10}
    assert 2 <= calls.count("ends") <= 3
    calls.clear()
    assert _settled(watermarks, 0.0) == {0: 10}
    assert calls == ["ends"]  # no wait: the stable offsets are not asked for
