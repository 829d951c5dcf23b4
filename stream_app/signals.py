"""SIGTERM/SIGINT/SIGHUP → a stop event, so loops finish or abort their transaction and close;
SIGTERM/SIGHUP → KeyboardInterrupt for the one-shot tools; and the exit status that asks a
supervisor for a restart."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)

EXIT_STALLED = 75
"""Exit status of a process that stopped because only a restart fixes what it is stuck
in (sysexits' EX_TEMPFAIL: "try again"): a hung librdkafka call (the trainer's
watchdog), a partition librdkafka never fetches (`kafka.first_fetch`), or no broker
answering at all. Distinct from 1 (runtime failure) and 2 (configuration error), so
a supervisor can restart on it and stop on a configuration error."""


def _terminations() -> list[signal.Signals]:
    """SIGTERM, and SIGHUP (a closed terminal) unless it is ignored, as under `nohup`."""
    found = [signal.SIGTERM]
    hangup = getattr(signal, "SIGHUP", None)  # not on Windows
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        found.append(hangup)
    return found


def stop_on_signals(stop: threading.Event) -> None:
    """Set `stop` on SIGTERM/SIGINT/SIGHUP (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal=%s: finishing the current batch and stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (*_terminations(), signal.SIGINT):
        signal.signal(sig, handler)


def interrupted_status(exc: KeyboardInterrupt) -> int:
    """The shell's status for a process a signal stopped, 128 + its number: 130 for
    Ctrl-C, 143 for SIGTERM and 129 for SIGHUP (named by `interrupt_on_termination`),
    so a supervisor tells a stop it asked for from one at the keyboard."""
    name = exc.args[0] if exc.args else None
    sig = signal.Signals.__members__.get(name) if isinstance(name, str) else None
    return 128 + int(sig if sig is not None else signal.SIGINT)


@contextlib.contextmanager
def interrupt_on_termination() -> Iterator[None]:
    """Inside, SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does (main thread
    only); the handlers before (SIGINT's too) are put back after.

    By default they kill Python outright, skipping every `finally`: a demo
    stopped by `timeout`, a supervisor or a closed terminal left its trainer,
    scorer and broker running, and a replay lost what was queued. The
    long-running commands replace this with `stop_on_signals`.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    before = {sig: signal.signal(sig, handler) for sig in _terminations()}
    before[signal.SIGINT] = signal.getsignal(signal.SIGINT)  # `stop_on_signals` may take it
    try:
        yield
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)
