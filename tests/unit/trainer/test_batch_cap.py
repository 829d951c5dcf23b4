"""The trainer's poll size under slow batches (`trainer.batch_cap`)."""

from __future__ import annotations

import pytest

from stream_app.trainer.batch_cap import next_batch_cap

INTERVAL_S = 300.0


def caps(per_record_s: float, *, configured: int = 10_000, polls: int = 40) -> list[int]:
    """The caps a trainer goes through when every poll is full and each record costs
    `per_record_s` between the poll and the commit."""
    cap, seen = configured, [configured]
    for _ in range(polls):
        cap = next_batch_cap(cap, configured=configured, taken=cap,
                             seconds=per_record_s * cap, max_poll_interval_s=INTERVAL_S)
        seen.append(cap)
    return seen


@pytest.mark.parametrize("per_record_s", [0.031, 0.05, 0.2, 1.0, 30.0, 1_000.0])
def test_slow_records_settle_on_a_cap_that_fits_half_the_interval(per_record_s: float) -> None:
    seen = caps(per_record_s)
    settled = seen[-1]
    assert seen[-10:] == [settled] * 10  # no swing between an abort and a commit
    assert settled == 1 or per_record_s * settled <= INTERVAL_S / 2
    assert seen == sorted(seen, reverse=True)  # only down: never back into a slow batch


def test_fast_records_keep_the_configured_cap() -> None:
    assert set(caps(0.001)) == {10_000}


def test_the_cap_grows_back_when_batches_get_fast_again() -> None:
    cap = 312
    for _ in range(10):
        cap = next_batch_cap(cap, configured=10_000, taken=cap, seconds=1.0,
                             max_poll_interval_s=INTERVAL_S)
    assert cap == 10_000


def test_a_batch_short_of_the_cap_says_nothing_about_a_bigger_one() -> None:
    assert next_batch_cap(500, configured=10_000, taken=20, seconds=0.1,
                          max_poll_interval_s=INTERVAL_S) == 500


def test_a_slow_short_batch_halves_from_its_own_size() -> None:
    assert next_batch_cap(10_000, configured=10_000, taken=600, seconds=200.0,
                          max_poll_interval_s=INTERVAL_S) == 300


def test_a_transaction_near_its_timeout_halves_the_cap_until_it_fits() -> None:
    """Rows that take 4 ms each to publish: a 10,000-record batch's transaction ran past
    transaction.timeout.ms (30 s) at every try, far under half the poll interval, and was
    aborted and read again for ever (exactly-once review)."""
    cap, seen = 10_000, []
    for _ in range(20):
        cap = next_batch_cap(cap, configured=10_000, taken=cap, seconds=0.004 * cap + 1,
                             max_poll_interval_s=INTERVAL_S, txn_seconds=0.004 * cap,
                             txn_timeout_s=30.0)
        seen.append(cap)
    assert seen[-1] == 2_500 and 0.004 * seen[-1] <= 15.0
    assert seen[-5:] == [2_500] * 5  # settled: no swing back into a transaction too long
