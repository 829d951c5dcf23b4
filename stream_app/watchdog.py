"""A stall watchdog: turn a hung trainer or scorer into a process exit a supervisor restarts.

librdkafka 2.16 can block forever in `send_offsets_to_transaction()` /
`commit_transaction()`, ignoring the timeout it was given, when the broker
goes away mid-transaction (confluentinc/librdkafka#5456, #5511), and a
synchronous `commit()`, which takes no timeout at all, can hang too
(confluentinc/confluent-kafka-python#1801); the scorer makes one on each
revoke and at shutdown. No Python code runs in the stuck thread, so nothing
in the loop can notice, and `/healthz` (another thread) still answers. This
daemon thread can: the loop calls `beat(step)` whenever it makes progress
(each iteration; the trainer also each learning step, transaction and
restored chunk), and when no beat came for `limit_s` the thread logs the step
it was in, dumps every thread's stack and calls `on_stall` (in the process:
`os._exit(EXIT_STALLED)`).

Exiting is safe by design (DESIGN.md, Semantics). For the trainer, nothing of
an unfinished transaction is visible; the next start fences this instance
(`init_transactions`), aborts what it left open, restores from the changelog
and resumes from the committed offsets. For the scorer, requests whose
answers were not committed are answered again (clients dedupe by request id).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

from stream_app.signals import EXIT_STALLED

__all__ = ["EXIT_STALLED", "NO_WATCHDOG", "Heartbeat", "Watchdog", "exit_stalled"]

log = logging.getLogger(__name__)

AFTER_RESTART = {
    "trainer": "the restart fences, aborts the open transaction and restores",
    "scorer": "the restart answers again the requests whose answers were not committed",
}


def exit_stalled() -> None:
    """Leave at once: a hung librdkafka call would block a normal exit (atexit, close)."""
    logging.shutdown()
    os._exit(EXIT_STALLED)


class Heartbeat(Protocol):
    """What a loop tells of its progress: a `Watchdog`, or `NO_WATCHDOG`."""

    def beat(self, step: str) -> None: ...


class _NoWatchdog:
    """Beats that go nowhere: a loop run in-process (tests, benchmarks) has no
    supervisor to restart it, so nothing may exit its process."""

    def beat(self, step: str) -> None:
        pass


NO_WATCHDOG: Heartbeat = _NoWatchdog()


class Watchdog:
    """Calls `on_stall` once if `beat()` is not called for `limit_s` seconds.

    `step` names what the loop was doing at its last beat, for the log line;
    `component` names the process and its setting there (`<component>.stall_timeout_s`).
    Use as a context manager (thread started on enter, stopped on exit).

    >>> fired = []
    >>> with Watchdog(0.2, component="trainer", on_stall=lambda: fired.append(True),
    ...               dump_stacks=False) as dog:
    ...     dog.beat("working")
    ...     time.sleep(1.0)
    >>> fired
    [True]
    """

    def __init__(self, limit_s: float, *, component: str,
                 on_stall: Callable[[], None] = exit_stalled, dump_stacks: bool = True) -> None:
        if limit_s <= 0:
            raise ValueError(f"watchdog limit must be > 0 seconds, got {limit_s}")
        self.limit_s = limit_s
        self.component = component
        self._on_stall = on_stall
        self._dump_stacks = dump_stacks
        self._last = time.monotonic()
        self._step = "start"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watchdog", daemon=True)

    def beat(self, step: str) -> None:
        """Progress was made; `step` is what comes next (e.g. "poll", "commit")."""
        self._last, self._step = time.monotonic(), step

    def __enter__(self) -> Watchdog:
        self.beat("start")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        tick = min(1.0, self.limit_s / 4)
        while not self._done.wait(tick):
            stalled = time.monotonic() - self._last
            if stalled < self.limit_s:
                continue
            log.error("watchdog: no progress for %.1fs in step=%s (over %s.stall_timeout_s=%g); "
                      "exiting with status %d so a supervisor restarts the %s (a librdkafka "
                      "call may be hung: confluentinc/librdkafka#5456); %s",
                      stalled, self._step, self.component, self.limit_s, EXIT_STALLED,
                      self.component, AFTER_RESTART.get(self.component, ""))
            if self._dump_stacks:
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            self._on_stall()
            return
