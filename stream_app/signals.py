"""SIGTERM/SIGINT → a stop event, so loops finish or abort their transaction and close;
and the exit status that asks a supervisor for a restart."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

EXIT_STALLED = 75
"""Exit status of a process that stopped because only a restart fixes what it is stuck
in (sysexits' EX_TEMPFAIL: "try again"): a hung librdkafka call (the trainer's
watchdog), a partition librdkafka never fetches (`kafka.first_fetch`). Distinct
from 1 (runtime failure) and 2 (configuration error)."""


def stop_on_signals(stop: threading.Event) -> None:
    """Set `stop` on SIGTERM/SIGINT (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal=%s: finishing the current batch and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
