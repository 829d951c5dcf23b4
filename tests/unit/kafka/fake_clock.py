"""A stand-in for a module's `time`: it moves only when told to sleep, so counts and
pacing do not depend on how busy the machine is."""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
