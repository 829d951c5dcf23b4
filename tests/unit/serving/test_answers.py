"""`answer_batch`: a request that cannot be answered gets an error prediction and a DLQ record,
and the rest of its batch is answered (an exception would stop the scorer, and the
restarted one would read the same request again)."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from stream_app.codec import decode_dlq, decode_prediction, encode_score_request
from stream_app.config import TopicNames
from stream_app.events import EmbeddingRow, ScoreRequest
from stream_app.serving import EmbeddingTable, answers
from stream_app.serving import table as table_module
from stream_app.serving.answers import ANSWER_MAX_BYTES, answer_batch
from stream_app.serving.batching import Pending
from stream_app.serving.config import ScorerConfig
from tests.device import DEVICE

TOPICS = TopicNames()


def _row(entity: str, ident: str, vec: list[float], recent: tuple[str, ...] = ()) -> EmbeddingRow:
    return EmbeddingRow(entity=entity, id=ident,  # type: ignore[arg-type]
                        vector=np.array(vec, dtype=np.float32), bias=0.0, model_version="v",
                        updates=1, updated_at=1, last_event_ts=1, recent_items=recent)


def _pending(req: ScoreRequest, offset: int) -> Pending:
    return Pending(topic=TOPICS.score_requests, partition=0, offset=offset, arrival=0.0,
                   key=req.user_id.encode(), value=encode_score_request(req))


def _answers(table: EmbeddingTable, reqs: list[ScoreRequest]) -> dict[str, list[bytes]]:
    out = answer_batch(table, [_pending(r, n) for n, r in enumerate(reqs)], topics=TOPICS,
                       cfg=ScorerConfig(), ready=True)
    by_topic: dict[str, list[bytes]] = {}
    for rec in out.records:
        by_topic.setdefault(rec.topic, []).append(rec.value)
    return by_topic


def test_a_score_that_overflows_float32_is_answered_with_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Past the table's own check, which refuses such an item row (VECTOR_NORM_MAX).
    monkeypatch.setattr(table_module, "VECTOR_NORM_MAX", math.inf)
    table = EmbeddingTable(device=DEVICE)
    table.upsert(_row("item", "huge", [3e38, 3e38]))  # finite rows, an infinite product
    table.upsert(_row("item", "plain", [0.0, 1.0]))
    table.upsert(_row("user", "u", [1.0, 1.0]))
    table.upsert(_row("user", "w", [0.0, 1.0]))
    got = _answers(table, [ScoreRequest(request_id="r1", user_id="u", k=2),
                           ScoreRequest(request_id="r2", user_id="w", k=1)])
    preds = {p.request_id: p for p in map(decode_prediction, got[TOPICS.predictions])}
    assert preds["r1"].items == () and preds["r1"].error is not None
    assert preds["r1"].error.startswith("non_finite_score")
    assert preds["r2"].error is None and preds["r2"].items[0].item_id == "huge"  # 3e38 fits
    [dlq] = [decode_dlq(v) for v in got[TOPICS.dlq]]
    assert (dlq.reason, dlq.stage, dlq.offset) == ("non_finite_score", "score", 0)


def test_a_refused_request_is_dead_lettered_with_its_headers() -> None:
    tags = (("traceparent", b"00-ab-01"), ("null", None))
    bad = Pending(topic=TOPICS.score_requests, partition=0, offset=3, arrival=0.0,
                  key=b"u", value=b'{"request_id": "r1", "user_id": "u", "k": 0}',
                  headers=tags)
    out = answer_batch(EmbeddingTable(device=DEVICE), [bad], topics=TOPICS, cfg=ScorerConfig(),
                       ready=True)
    [dead] = [r for r in out.records if r.topic == TOPICS.dlq]
    assert decode_dlq(dead.value).stage == "score"
    assert dead.headers == tags


def test_a_prediction_over_the_size_bound_is_answered_with_an_error() -> None:
    table = EmbeddingTable(device=DEVICE)
    long_ids = [f"{n:04d}" + "x" * 236 for n in range(1004)]  # 240 characters, as ids may be
    # Positive vectors: every recent item supports every answer, so each lists 3 of them.
    rng = np.random.default_rng(0)
    for ident in long_ids:
        table.upsert(_row("item", ident, rng.uniform(0.1, 1.0, size=2).tolist()))
    table.upsert(_row("user", "u", [1.0, 1.0], recent=tuple(long_ids[:4])))
    small = ScoreRequest(request_id="small", user_id="u", k=10, explain=True)
    big = ScoreRequest(request_id="big", user_id="u", k=1000, explain=True)
    got = _answers(table, [big, small])
    preds = {p.request_id: p for p in map(decode_prediction, got[TOPICS.predictions])}
    assert preds["big"].error is not None and preds["big"].error.startswith("answer_too_large")
    assert preds["small"].error is None and len(preds["small"].items) == 10
    assert all(len(v) <= ANSWER_MAX_BYTES for v in got[TOPICS.predictions])
    [dlq] = [decode_dlq(v) for v in got[TOPICS.dlq]]
    assert dlq.reason == "answer_too_large"
    assert orjson.loads(dlq.value or b"")["request_id"] == "big"


def test_a_refusal_while_loading_says_not_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """Error answers said ready: true while the table loaded."""
    # Past the table's own check, which refuses such an item row (VECTOR_NORM_MAX).
    monkeypatch.setattr(table_module, "VECTOR_NORM_MAX", math.inf)
    table = EmbeddingTable(device=DEVICE)
    table.upsert(_row("item", "huge", [3e38, 3e38]))
    table.upsert(_row("item", "plain", [0.0, 1.0]))
    table.upsert(_row("user", "u", [1.0, 1.0]))
    bad = Pending(topic=TOPICS.score_requests, partition=0, offset=9, arrival=0.0, key=b"x",
                  value=b'{"request_id": "r0", "user_id": "x", "k": 0}')
    reqs = [ScoreRequest(request_id="r1", user_id="u", k=2),
            ScoreRequest(request_id="r2", user_id="nobody", k=1)]
    out = answer_batch(table, [bad, *(_pending(r, n) for n, r in enumerate(reqs))],
                       topics=TOPICS, cfg=ScorerConfig(), ready=False)
    preds = {p.request_id: p for p in (decode_prediction(r.value) for r in out.records
                                       if r.topic == TOPICS.predictions)}
    assert preds["r0"].error is not None and preds["r1"].error is not None
    assert not any(p.ready for p in preds.values())
    assert out.fallbacks == ["not_loaded"]  # r2's answer


def test_a_fallback_refused_at_encoding_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fallbacks` feeds the fallback counter: an answer refused as too large is an
    error answer, not a popularity answer, so it is not counted as one."""
    monkeypatch.setattr(answers, "ANSWER_MAX_BYTES", 2_000)
    table = EmbeddingTable(device=DEVICE)
    for n in range(50):
        table.upsert(_row("item", f"{n:04d}" + "x" * 96, [0.0, 1.0]))
    big = ScoreRequest(request_id="big", user_id="nobody", k=50)  # ~5 KB of ids
    small = ScoreRequest(request_id="small", user_id="nobody", k=2)
    out = answer_batch(table, [_pending(big, 0), _pending(small, 1)], topics=TOPICS,
                       cfg=ScorerConfig(), ready=True)
    preds = {p.request_id: p for p in (decode_prediction(r.value) for r in out.records
                                       if r.topic == TOPICS.predictions)}
    assert preds["big"].error is not None and preds["big"].error.startswith("answer_too_large")
    assert preds["small"].error is None and preds["small"].fallback
    assert out.fallbacks == ["unknown_user"]


def test_large_requests_are_scored_in_slices_of_bounded_bytes() -> None:
    """A batch was every pending request whatever its size: 256 requests of ~1 MiB took
    8.5 s as one batch, with nothing else answered meanwhile (helper review)."""
    from stream_app.serving.batching import BATCH_BYTES_MAX, take_batch

    def req(n: int, size: int) -> Pending:
        return Pending("t", 0, n, arrival=0.0, key=None, value=b"x" * size)

    small = [req(n, 100) for n in range(256)]
    assert take_batch(small) == (small, [])
    mib = [req(n, 1024 * 1024) for n in range(10)]
    slices = []
    rest = mib
    while rest:
        batch, rest = take_batch(rest)
        assert sum(len(p.value or b"") for p in batch) <= BATCH_BYTES_MAX
        slices.append([p.offset for p in batch])
    assert slices == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # in order, none left out
    huge = req(0, 2 * BATCH_BYTES_MAX)
    assert take_batch([huge, *small[:2]]) == ([huge], small[:2])  # alone, not refused


def test_the_scorer_answers_a_slice_and_keeps_the_rest_pending() -> None:
    """`Scorer._answer` took every pending request as one batch."""
    import threading
    from typing import Any, cast

    from stream_app.config import KafkaConfig
    from stream_app.scorer import Scorer

    class Producer:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def send(self, topic: str, *_a: object) -> None:
            self.sent.append(topic)

        def poll(self, _timeout: float) -> int:
            return 0

    scorer = Scorer(KafkaConfig(), ScorerConfig(device="cpu"), stop=threading.Event())
    three = [Pending("score-requests", 0, n, 0.0, b"u", b"x" * (3 * 1024 * 1024))
             for n in range(3)]  # over 1 MiB each: dead-lettered, one record each
    scorer._pending = list(three)  # noqa: SLF001
    producer = Producer()
    scorer._answer(cast(Any, producer))  # noqa: SLF001
    assert scorer._pending == three[1:] and len(producer.sent) == 1  # noqa: SLF001
    while scorer._pending:  # noqa: SLF001
        scorer._answer(cast(Any, producer))  # noqa: SLF001
    assert len(producer.sent) == 3



def _two_requests_to_one_item() -> dict[str, list[bytes]]:
    """Requests r1 and r2 of user u, over a table of one item."""
    table = EmbeddingTable(device=DEVICE)
    table.upsert(_row("item", "i", [1.0, 0.0]))
    table.upsert(_row("user", "u", [1.0, 0.0]))
    return _answers(table, [ScoreRequest(request_id="r1", user_id="u", k=1),
                            ScoreRequest(request_id="r2", user_id="u", k=1)])


def _decoding_r1_raises(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """The scorer's request decoder meets a bug (raises `error`) on request r1 only."""
    real = answers._decode_request

    def buggy(value: bytes | None, key: bytes | None) -> ScoreRequest:
        req = real(value, key)
        if req.request_id == "r1":
            raise error
        return req

    monkeypatch.setattr(answers, "_decode_request", buggy)


def test_a_request_that_meets_a_bug_in_the_decoder_is_refused_and_the_rest_answered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything but a DecodeError escaped `answer_batch`: the scorer stopped, and the
    restarted one read the same request again, never committed."""
    _decoding_r1_raises(monkeypatch, RecursionError("maximum recursion depth exceeded"))
    got = _two_requests_to_one_item()
    preds = {p.request_id: p for p in map(decode_prediction, got[TOPICS.predictions])}
    assert preds["r2"].error is None and [i.item_id for i in preds["r2"].items] == ["i"]
    # Its id read from the JSON, so the client is not left waiting for its own timeout.
    assert preds["r1"].items == () and preds["r1"].error is not None
    assert preds["r1"].error.startswith("decoder_error: RecursionError")
    assert len(got[TOPICS.predictions]) == 2
    [dead] = [decode_dlq(v) for v in got[TOPICS.dlq]]
    assert dead.reason == "decoder_error" and "RecursionError" in dead.detail


def test_a_request_whose_ranking_raises_gets_an_error_answer_and_the_rest_are_ranked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's one top-K call raised for everyone in it, and stopped the scorer: the
    restarted one read the same requests again, never committed."""
    real = answers.rank

    def buggy(table: EmbeddingTable, reqs: list[ScoreRequest], **kw: int) -> list[object]:
        if any(r.request_id == "r1" for r in reqs):
            raise IndexError("a bug")
        return real(table, reqs, **kw)  # type: ignore[return-value]

    monkeypatch.setattr(answers, "rank", buggy)
    got = _two_requests_to_one_item()
    preds = {p.request_id: p for p in map(decode_prediction, got[TOPICS.predictions])}
    assert preds["r2"].error is None and [i.item_id for i in preds["r2"].items] == ["i"]
    assert preds["r1"].items == () and preds["r1"].error is not None
    assert preds["r1"].error.startswith("rank_error: IndexError")
    assert len(got[TOPICS.predictions]) == 2  # one answer each, none twice
    [dead] = [decode_dlq(v) for v in got[TOPICS.dlq]]
    assert dead.reason == "rank_error" and dead.offset == 0


def test_each_rank_call_is_preceded_by_a_beat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranked one by one after the batch's call raised, 256 requests of a large catalogue
    could outlast the stall timeout with no beat between them."""
    real = answers.rank

    def buggy(table: EmbeddingTable, reqs: list[ScoreRequest], **kw: int) -> list[object]:
        if len(reqs) > 1:
            raise IndexError("a bug of batches")
        return real(table, reqs, **kw)  # type: ignore[return-value]

    monkeypatch.setattr(answers, "rank", buggy)
    table = EmbeddingTable(device=DEVICE)
    table.upsert(_row("item", "i", [1.0, 0.0]))
    table.upsert(_row("user", "u", [1.0, 0.0]))
    reqs = [ScoreRequest(request_id=f"r{n}", user_id="u", k=1) for n in range(3)]
    beats: list[int] = []
    out = answer_batch(table, [_pending(r, n) for n, r in enumerate(reqs)], topics=TOPICS,
                       cfg=ScorerConfig(), ready=True, on_rank=lambda: beats.append(1))
    assert len(beats) == 4 and out.bugs == [False] * 3 and len(out.records) == 3


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("a second bug")


@pytest.mark.parametrize("error", [ValueError("bad \udc80 byte"), _Unprintable()])
def test_a_decoder_bug_whose_message_json_cannot_hold_is_still_dead_lettered(
        monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """Its message goes into the DLQ record and the error answer: a lone surrogate
    (orjson refuses it) or a raising __str__ escaped `answer_batch` (helper review)."""
    _decoding_r1_raises(monkeypatch, error)
    got = _two_requests_to_one_item()
    [dead] = [decode_dlq(v) for v in got[TOPICS.dlq]]
    assert dead.reason == "decoder_error"
    assert sorted(decode_prediction(v).request_id for v in got[TOPICS.predictions]) == ["r1", "r2"]
