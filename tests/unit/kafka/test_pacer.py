"""`Pacer` on a fake clock: paced from the first send, and a stall is not made up in one burst."""

from __future__ import annotations

import pytest

from stream_app.kafka import produce
from stream_app.kafka.produce import Pacer
from tests.unit.kafka.fake_clock import FakeClock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(produce, "time", fake)
    return fake


def test_the_clock_starts_at_the_first_send(clock: FakeClock) -> None:
    pacer = Pacer(rate=100)
    clock.now += 5.0  # the source took 5 s to its first record (MovieLens sorts first)
    start = clock.now
    for _ in range(200):
        pacer.wait()
    assert clock.now - start == pytest.approx(1.99)  # send n at n/100 s, no catch-up burst


def test_the_first_record_goes_at_once(clock: FakeClock) -> None:
    """It waited one interval first: with --rate 0.001, nothing was sent for 1,000 s."""
    pacer = Pacer(rate=0.001)
    pacer.wait()
    assert clock.now == 100.0
    pacer.wait()
    assert clock.now == pytest.approx(1100.0)


def test_a_stall_is_caught_up_by_one_burst_at_most(clock: FakeClock) -> None:
    pacer = Pacer(rate=100, burst_s=1.0)
    for _ in range(100):
        pacer.wait()
    clock.now += 10.0  # a stall of 10 s: 1,000 sends behind
    stalled = clock.now
    for _ in range(100):  # one second's worth goes out at once ...
        pacer.wait()
    assert clock.now == stalled
    for _ in range(300):  # ... then the rate again, not 1,000 sends at once
        pacer.wait()
    assert clock.now - stalled == pytest.approx(3.0, abs=0.02)


def test_unpaced_never_sleeps(clock: FakeClock) -> None:
    pacer = Pacer(rate=0)
    for _ in range(1000):
        pacer.wait()
    assert clock.now == 100.0
