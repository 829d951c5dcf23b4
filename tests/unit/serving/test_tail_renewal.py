"""The scorer replaces an `embeddings` tail client that cannot reach the cluster at two
checks in a row (`EmbeddingsCopy.report_lag`), and only then."""

from __future__ import annotations

import time

import pytest
import torch
from prometheus_client import CollectorRegistry

from stream_app.observability import ScorerMetrics
from stream_app.scorer.embeddings import GROW_CHECK_S, EmbeddingsCopy
from stream_app.serving import EmbeddingTable
from stream_app.watchdog import NO_WATCHDOG


class _Tail:
    """A `TailReader` whose checks fail when told to: what `report_lag` reads of it."""

    topic = "embeddings"

    def __init__(self) -> None:
        self.failed_checks = 0
        self.reachable = True
        self.renewals = 0

    def grow(self) -> list[int]:
        self.failed_checks = 0 if self.reachable else self.failed_checks + 1
        return []

    def renew(self) -> None:
        self.renewals += 1
        self.failed_checks = 0

    def lag(self) -> dict[int, int]:
        return {}


def _copy() -> EmbeddingsCopy:
    return EmbeddingsCopy(EmbeddingTable(device=torch.device("cpu")),
                          metrics=ScorerMetrics(CollectorRegistry()), load_batch=100,
                          watchdog=NO_WATCHDOG)


def test_two_failed_checks_in_a_row_replace_the_client_and_one_does_not() -> None:
    copy, tail, now = _copy(), _Tail(), time.monotonic()

    def check() -> None:
        nonlocal now
        now += GROW_CHECK_S
        copy.report_lag(tail, now)  # type: ignore[arg-type]

    tail.reachable = False
    check()
    assert tail.renewals == 0  # one failed check: an outage's first minute
    tail.reachable = True
    check()
    tail.reachable = False
    check()
    assert tail.renewals == 0  # a success between resets the count
    check()
    assert tail.renewals == 1
    check()
    check()
    assert tail.renewals == 2  # a longer outage: a new client a minute


def test_the_check_runs_at_most_every_grow_check_interval() -> None:
    copy, tail, start = _copy(), _Tail(), time.monotonic()
    tail.reachable = False
    for n in range(10):
        copy.report_lag(tail, start + GROW_CHECK_S + n)  # type: ignore[arg-type]
    assert (tail.failed_checks, tail.renewals) == (1, 0)


def test_the_real_tail_counts_failed_checks_in_a_row_and_a_success_resets_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in above resets its own count; this is `TailReader.grow`'s (test review)."""
    from confluent_kafka import KafkaError, KafkaException

    import stream_app.kafka.tail as tail_module
    from stream_app.config import KafkaConfig
    from stream_app.kafka.tail import TailReader

    answers: list[bool] = [False, False, True, False]

    def assign_added(*_a: object) -> list[int]:
        if not answers.pop(0):
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))  # noqa: SLF001
        return []

    monkeypatch.setattr(tail_module, "assign_added", assign_added)
    tail = TailReader(KafkaConfig(), "embeddings", client_id="t")
    monkeypatch.setattr(tail, "_opened", lambda: None)
    counts = []
    for _ in range(4):
        assert tail.grow() == []
        counts.append(tail.failed_checks)
    assert counts == [1, 2, 0, 1]
