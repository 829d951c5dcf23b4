"""`settled_ends`: the changelog's end once nothing below it is open or unmarked."""

from __future__ import annotations

from typing import Any

import pytest

from stream_app.config import KafkaConfig
from stream_app.kafka import consumer as consumer_module
from stream_app.kafka.consumer import settled_ends

KAFKA = KafkaConfig(bootstrap_servers="127.0.0.1:1")


def _script(monkeypatch: pytest.MonkeyPatch, stable: list[dict[int, int]],
            ends: list[dict[int, int]]) -> list[str]:
    """Answer the two reads from the lists in turn (the last again); log their order."""
    calls: list[str] = []

    def next_of(answers: list[dict[int, int]], name: str) -> dict[int, int]:
        calls.append(name)
        return answers[min(calls.count(name), len(answers)) - 1]

    monkeypatch.setattr(consumer_module, "end_offsets",
                        lambda _c, _t, *a: next_of(stable, "stable"))
    monkeypatch.setattr(consumer_module, "high_watermarks",
                        lambda *_a, **_k: next_of(ends, "ends"))
    return calls


def _settled(wait_s: float) -> dict[int, int]:
    fake: Any = object()
    return settled_ends(KAFKA, fake, "t", client_id="c", wait_s=wait_s)


def test_waits_for_the_stable_offsets_to_reach_the_end_reading_them_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _script(monkeypatch, stable=[{0: 9, 1: 4}, {0: 10, 1: 4}],
                    ends=[{0: 10, 1: 4}, {0: 10, 1: 4}])
    assert _settled(5.0) == {0: 10, 1: 4}
    assert calls == ["stable", "ends", "stable", "ends"]


def test_gives_the_end_as_it_is_after_the_wait_or_at_once_without_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _script(monkeypatch, stable=[{0: 9}], ends=[{0: 10}])
    assert _settled(0.15) == {0: 10}
    assert 2 <= calls.count("ends") <= 3
    calls.clear()
    assert _settled(0.0) == {0: 10}
    assert calls == ["ends"]  # no wait: the stable offsets are not asked for
