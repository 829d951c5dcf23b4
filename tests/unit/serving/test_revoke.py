"""The scorer's revoke callback: a failed commit there must not stop the scorer.

Stand-ins for the producer and the request consumer: the callback's logic
(flush, commit, forget the partitions) is what is tested; the commit against
a real broker is tests/integration/test_scorer.py's
test_a_replica_that_gives_up_partitions_commits_what_it_answered.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, cast

import pytest

from stream_app.config import KafkaConfig
from stream_app.kafka.exceptions import KafkaEdgeError
from stream_app.kafka.records import Partition
from stream_app.scorer import Scorer
from stream_app.serving import ScorerConfig
from stream_app.serving.batching import Pending


class _Producer:
    def flush(self, timeout: float) -> int:
        return 0


class _Requests:
    def __init__(self) -> None:
        self.commits: list[Mapping[Partition, int]] = []

    def commit(self, offsets: Mapping[Partition, int], *, asynchronous: bool = True) -> None:
        self.commits.append(offsets)
        raise KafkaEdgeError("offset commit failed: no coordinator")


def test_a_failed_commit_on_revoke_is_logged_and_the_partitions_are_forgotten(
        caplog: pytest.LogCaptureFixture) -> None:
    scorer = Scorer(KafkaConfig(), ScorerConfig(device="cpu"), stop=threading.Event())
    gone, kept = ("score-requests", 0), ("score-requests", 1)
    scorer._pending = [Pending(*gone, 5, 0.0, b"u", b"{}"),  # noqa: SLF001
                       Pending(*kept, 7, 0.0, b"v", b"{}")]
    requests = _Requests()
    scorer._on_revoke(cast(Any, _Producer()), cast(Any, requests), [gone])  # noqa: SLF001
    assert len(requests.commits) == 1
    assert [(p.topic, p.partition) for p in scorer._pending] == [kept]  # noqa: SLF001
    assert "commit on revoke failed" in caplog.text


def _after_a_lost_answer() -> Scorer:
    """A scorer one of whose answers the broker refused."""
    scorer = Scorer(KafkaConfig(), ScorerConfig(device="cpu"), stop=threading.Event())
    tracked = scorer._tracker.open({("score-requests", 0): 6})  # noqa: SLF001
    scorer._tracker.sent(tracked)  # noqa: SLF001
    scorer._tracker.seal(tracked)  # noqa: SLF001
    scorer._tracker.delivered(tracked, "broker refused it")  # noqa: SLF001
    return scorer


def test_after_a_failed_delivery_the_revoke_commits_nothing() -> None:
    scorer = _after_a_lost_answer()
    requests = _Requests()
    scorer._on_revoke(cast(Any, _Producer()), cast(Any, requests), [("score-requests", 0)])  # noqa: SLF001
    assert requests.commits == []  # the answer is re-read and answered after the restart


class _Closing(_Requests):
    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_failed_final_commit_is_logged_and_the_scorer_stops_cleanly(
        caplog: pytest.LogCaptureFixture) -> None:
    """Stopped while its group rebalances, the last commit is refused (ILLEGAL_GENERATION):
    the requests are answered again by the next owner, as after a crash; it is no error."""
    scorer = Scorer(KafkaConfig(), ScorerConfig(device="cpu"), stop=threading.Event())
    requests = _Closing()
    scorer._requests = cast(Any, requests)  # noqa: SLF001
    scorer._shutdown(cast(Any, _Producer()))  # noqa: SLF001
    assert len(requests.commits) == 1 and requests.closed
    assert "final commit failed" in caplog.text


def test_after_a_failed_delivery_the_final_commit_still_stops_the_scorer() -> None:
    scorer = _after_a_lost_answer()
    requests = _Closing()
    scorer._requests = cast(Any, requests)  # noqa: SLF001
    with pytest.raises(KafkaEdgeError, match="not delivered"):
        scorer._shutdown(cast(Any, _Producer()))  # noqa: SLF001
    assert requests.commits == [] and requests.closed


class _Beats:
    def __init__(self) -> None:
        self.steps: list[str] = []

    def beat(self, step: str) -> None:
        self.steps.append(step)


def test_a_stopping_scorer_beats_the_watchdog_before_each_batch_it_still_answers() -> None:
    """At a stop the scorer answers all it holds, up to 4 MiB of requests a batch: with one
    beat for all of them, a long queue could outlast `stall_timeout_s` and a clean stop
    become a watchdog exit."""
    beats = _Beats()
    scorer = Scorer(KafkaConfig(), ScorerConfig(device="cpu"), stop=threading.Event(),
                    watchdog=beats)
    scorer._pending = [Pending("score-requests", 0, n, 0.0, b"u", b"{}")  # noqa: SLF001
                       for n in range(3)]
    beats_at_answer: list[int] = []

    def answer_one(producer: object) -> None:  # one request a batch
        beats_at_answer.append(beats.steps.count("shutdown"))
        del scorer._pending[0]  # noqa: SLF001

    scorer._answer = answer_one  # type: ignore[method-assign]  # noqa: SLF001
    scorer._requests = cast(Any, _Closing())  # noqa: SLF001
    scorer._shutdown(cast(Any, _Producer()))  # noqa: SLF001
    assert beats_at_answer == [2, 3, 4]  # one as the shutdown starts, then one a batch
