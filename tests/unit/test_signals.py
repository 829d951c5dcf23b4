"""SIGTERM inside a one-shot command runs its cleanup, as Ctrl-C does."""

from __future__ import annotations

import os
import signal

import pytest

from stream_app.signals import interrupt_on_termination


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
