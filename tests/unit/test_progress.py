"""The replay progress line's rate counts from the first record sent."""

from __future__ import annotations

import io

import pytest

from stream_app import progress
from stream_app.progress import Progress


def test_the_rate_leaves_out_the_time_before_the_first_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MovieLens is read and sorted (seconds) after the line is made: counted as send
    time, a replay paced at 2,000/s showed 542/s halfway."""
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    bar = Progress("replay", total=4000, stream=out)
    now[0] += 3.0  # reading the input
    for _ in range(4000):
        bar.advance()
        now[0] += 1 / 2000
    bar.close()
    assert "4,000/4,000" in out.getvalue() and " 2,000/s" in out.getvalue()
