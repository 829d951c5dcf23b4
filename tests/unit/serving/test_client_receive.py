"""`ScoreClient` keeps its own answers from the shared predictions topic, and decodes only
those (a stand-in reader plays the topic; the client's broker path is in
tests/integration/test_scorer.py)."""

from __future__ import annotations

from typing import Any

import pytest

from stream_app import client as client_module
from stream_app.client import KEEP, RecentIds, ScoreClient
from stream_app.codec.scoring import decode_prediction, encode_prediction
from stream_app.events import Prediction
from stream_app.kafka.records import RawRecord


def _answer(rid: str, key: str | None = None) -> RawRecord:
    value = encode_prediction(Prediction(request_id=rid, user_id="u", items=(),
                                         model_version="m", fallback=True, latency_ms=1.0))
    return RawRecord(topic="predictions", partition=0, offset=0,
                     key=(rid if key is None else key).encode(), value=value, timestamp_ms=0)


class _Topic:
    def __init__(self, records: list[RawRecord]) -> None:
        self.records = records

    def poll(self, _n: int, _timeout: float) -> list[RawRecord]:
        out, self.records = self.records, []
        return out


def test_others_answers_are_skipped_by_key_before_decoding(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every answer on the topic was decoded (orjson and the schema) before the client
    checked whose it was."""
    decoded: list[bytes] = []

    def counting(value: bytes | None) -> Any:
        decoded.append(value or b"")
        return decode_prediction(value)

    monkeypatch.setattr(client_module, "decode_prediction", counting)
    client = ScoreClient.__new__(ScoreClient)
    client._sent = RecentIds(KEEP)  # noqa: SLF001
    client._sent.add("mine")  # noqa: SLF001
    client._answers = {}  # noqa: SLF001
    client.duplicates = 0
    others = [_answer(f"other-{n}") for n in range(50)]
    client._answers_in = _Topic([*others, _answer("mine"), _answer("mine")])  # type: ignore[assignment]  # noqa: SLF001
    client._receive(0.0)  # noqa: SLF001
    assert list(client._answers) == ["mine"] and client.duplicates == 1  # noqa: SLF001
    assert len(decoded) == 2


def test_released_requests_keep_no_answer_and_ignore_later_copies() -> None:
    """`send`/`wait` kept every answer until `KEEP` later sends pushed it out: at k=1000,
    about 14 GiB for a program that never stopped sending."""
    client = ScoreClient.__new__(ScoreClient)
    client._sent = RecentIds(KEEP)  # noqa: SLF001
    client._answers, client.undelivered, client.duplicates = {}, {}, 0  # noqa: SLF001
    for rid in ("a", "b"):
        client._sent.add(rid)  # noqa: SLF001
    client._answers_in = _Topic([_answer("a"), _answer("b")])  # type: ignore[assignment]  # noqa: SLF001
    client._receive(0.0)  # noqa: SLF001
    client.release(["a"])
    assert list(client._answers) == ["b"]  # noqa: SLF001
    client._answers_in = _Topic([_answer("a")])  # type: ignore[assignment]  # noqa: SLF001
    client._receive(0.0)  # noqa: SLF001
    assert list(client._answers) == ["b"]  # noqa: SLF001
