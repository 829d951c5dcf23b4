"""SIGTERM inside a one-shot command runs its cleanup, as Ctrl-C does."""

from __future__ import annotations

import os
import signal

import pytest

from stream_app.signals import interrupt_on_termination, interrupted_status


def test_sigterm_raises_keyboard_interrupt_inside_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), interrupt_on_termination():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # Python runs the handler between bytecodes, soon after
                pass
        finally:
            cleaned.append(True)
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stopped_command_exits_with_128_plus_the_signal() -> None:
    for sig, status in ((signal.SIGTERM, 143), (signal.SIGHUP, 129)):
        with pytest.raises(KeyboardInterrupt) as caught, interrupt_on_termination():
            os.kill(os.getpid(), sig)
            for _ in range(1000):
                pass
        assert interrupted_status(caught.value) == status
    assert interrupted_status(KeyboardInterrupt()) == 130  # Ctrl-C
