"""`--stats-file`: one JSON line per batch; a failed write does not stop the trainer."""

from __future__ import annotations

import errno
import io
import math

import orjson
import pytest

from stream_app.kafka.client_logs import Repeats
from stream_app.trainer import BatchResult, stats_writer
from stream_app.trainer.result import TxnOutcome


def _result(events: int) -> BatchResult:
    return BatchResult(wall_ms=1, event_ts_max=2, events=events, applied=events, evaluated=0,
                       dlq=0, rows=3, loss=0.5, hit_rate=0.0, hit_rate_popularity=0.0,
                       recall=0.0, recall_popularity=0.0, mrr=0.0, mrr_popularity=0.0,
                       freshness_p50_s=0.1, freshness_p99_s=0.2, outcome=TxnOutcome.COMMITTED)


class _FullDisk(io.BytesIO):
    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_each_batch_is_one_json_line() -> None:
    out = io.BytesIO()
    write = stats_writer(out, "stats.jsonl")
    write(_result(5))
    write(_result(7))
    assert [orjson.loads(line)["events"] for line in out.getvalue().splitlines()] == [5, 7]


def test_a_full_disk_is_logged_once_a_while_and_the_trainer_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    """Raised, the OSError stopped the trainer after a committed batch, and every restart
    at its first batch."""
    write = stats_writer(_FullDisk(), "stats.jsonl",
                         Repeats(clock=iter([0.0, 1.0, 2.0, 40.0]).__next__))
    for n in range(4):
        write(_result(n))
    lost = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(lost) == 2
    assert "No space left on device" in lost[0] and "and 2 more like it" in lost[1]


def test_a_batch_s_freshness_leaves_out_records_without_a_produce_time() -> None:
    """A record without a timestamp (-1) counted as 56 years late in the stats file's
    per-batch p99, which `stream-app report` plots."""
    from stream_app.codec import encode_event
    from stream_app.config import TopicNames
    from stream_app.events import Event, EventKind
    from stream_app.kafka.records import RawRecord
    from stream_app.trainer.batch import decode_batch
    from stream_app.trainer.result import batch_result

    topics, now = TopicNames(), 1_700_000_010_000

    def record(offset: int, produced_ms: int) -> RawRecord:
        event = Event(event_id=f"e{offset}", user_id="u", item_id="i", ts=now - 5_000,
                      kind=EventKind.CLICK)
        return RawRecord(topics.clicks, 0, offset, b"u", encode_event(event), produced_ms)

    def result(batch: list[RawRecord]) -> BatchResult:
        return batch_result(batch, decode_batch(batch, topics, now_ms=now, max_future_ms=0),
                            (), applied=len(batch), losses=(), dlq=0, rows=0,
                            outcome=TxnOutcome.COMMITTED, published_ms=now)

    batch = [record(i, now - 200) for i in range(98)] + [record(98, -1), record(99, -1)]
    assert (result(batch).freshness_p50_s, result(batch).freshness_p99_s) == (0.2, 0.2)
    assert math.isnan(result([record(0, -1)]).freshness_p99_s)
