"""`--stats-file`: one JSON line per batch; a failed write does not stop the trainer."""

from __future__ import annotations

import errno
import io

import orjson
import pytest

from stream_app.kafka.clients import Repeats
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
