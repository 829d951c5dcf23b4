"""A run of requests that meet a bug of ours (decoder_error, rank_error) stops the scorer
before their answers go out, and nothing past them is committed.

One such request is answered with an error and dead-lettered. A run of them is a broken
build or a device gone bad (every `rank()` raising): dead-lettering them all would commit
the whole request stream away while /readyz said ready (helper review of ff13c21).
Stand-ins for the producer and the request consumer, as in `test_revoke`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import pytest

import stream_app.scorer.loop
from stream_app.codec import encode_score_request
from stream_app.config import KafkaConfig
from stream_app.events import EmbeddingRow, ScoreRequest
from stream_app.kafka.records import Partition
from stream_app.scorer import Scorer
from stream_app.serving import EmbeddingTable, ScorerConfig, answers
from stream_app.serving.batching import Pending

TOPIC = "score-requests"


class _Producer:
    """Delivers every record at once."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, topic: str, _key: object, _value: object,
             on_delivered: Callable[[str | None], None], *_a: object) -> None:
        self.sent.append(topic)
        on_delivered(None)

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


class _Requests:
    def __init__(self) -> None:
        self.commits: list[Mapping[Partition, int]] = []

    def commit(self, offsets: Mapping[Partition, int], *, asynchronous: bool = True) -> None:
        self.commits.append(dict(offsets))

    def close(self) -> None:
        pass


def _row(entity: str, ident: str) -> EmbeddingRow:
    return EmbeddingRow(entity=entity, id=ident,  # type: ignore[arg-type]
                        vector=np.array([1.0, 0.0], dtype=np.float32), bias=0.0,
                        model_version="v", updates=1, updated_at=1, last_event_ts=1)


def _scorer(monkeypatch: pytest.MonkeyPatch, broken: Callable[[str], bool]) -> Scorer:
    """A scorer (BUGS_MAX 5) of one user and one item whose `rank()` raises for any
    request whose id `broken` names."""
    monkeypatch.setattr(stream_app.scorer.loop, "BUGS_MAX", 5)
    real = answers.rank

    def rank(table: EmbeddingTable, reqs: list[ScoreRequest], **kw: Any) -> Any:
        if any(broken(r.request_id) for r in reqs):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(table, reqs, **kw)

    monkeypatch.setattr(answers, "rank", rank)
    scorer = Scorer(KafkaConfig(), ScorerConfig(device="cpu"), stop=threading.Event())
    scorer.table.upsert(_row("item", "i"))
    scorer.table.upsert(_row("user", "u"))
    scorer.ready.set()
    return scorer


def _queue(scorer: Scorer, offsets: range) -> None:
    scorer._pending.extend(  # noqa: SLF001
        Pending(TOPIC, 0, n, 0.0, b"u",
                encode_score_request(ScoreRequest(request_id=f"r{n}", user_id="u", k=1)))
        for n in offsets)


def test_a_run_of_requests_meeting_a_bug_stops_the_scorer_before_it_answers_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    scorer = _scorer(monkeypatch, broken=lambda rid: int(rid[1:]) < 8)
    monkeypatch.setattr(stream_app.scorer.loop, "take_batch", lambda p: (p[:5], p[5:]))
    producer, requests = _Producer(), _Requests()
    scorer._requests = cast(Any, requests)  # noqa: SLF001
    _queue(scorer, range(3))
    scorer._answer(cast(Any, producer))  # noqa: SLF001
    assert producer.sent.count("predictions") == 3 and producer.sent.count("events-dlq") == 3
    _queue(scorer, range(3, 11))
    with pytest.raises(RuntimeError, match="5 requests in a row met a bug"):
        scorer._answer(cast(Any, producer))  # noqa: SLF001
    assert len(producer.sent) == 6  # the second batch (3-7): nothing sent
    # The run's `finally`: requests 8-10 would be answered, and committed past 3-7.
    scorer._shutdown(cast(Any, producer))  # noqa: SLF001
    assert len(producer.sent) == 6 and requests.commits == [{(TOPIC, 0): 3}]


def test_requests_meeting_a_bug_among_answered_ones_never_stop_the_scorer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A control: 4 in a row raise, across batches too, then one is answered."""
    scorer = _scorer(monkeypatch, broken=lambda rid: int(rid[1:]) % 5 != 0)
    producer = _Producer()
    for start in range(1, 40, 3):
        _queue(scorer, range(start, start + 3))
        scorer._answer(cast(Any, producer))  # noqa: SLF001
    assert producer.sent.count("events-dlq") == 32 and producer.sent.count("predictions") == 39
