"""The demo's exit status counts how its trainer and scorer stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stream_app.demo.processes import Child
from stream_app.demo.run import _stop_children

ON_TERM = ("import signal, sys, time\n"
           "signal.signal(signal.SIGTERM, lambda *_: sys.exit({code}))\n"
           "print('ready', flush=True)\n"
           "time.sleep(30)\n")


class Notes:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, line: str) -> None:
        self.lines.append(line)


def _child(name: str, code: int, tmp_path: Path) -> Child:
    proc = subprocess.Popen([sys.executable, "-c", ON_TERM.format(code=code)],  # noqa: S603
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return Child(name=name, proc=proc, metrics_url="", log_file=tmp_path / f"{name}.log")


def test_a_component_that_fails_as_it_stops_fails_the_demo(tmp_path: Path) -> None:
    """It only left a note: run_demo returned 0 whatever the exit codes."""
    children = [_child("trainer", 0, tmp_path), _child("scorer", 3, tmp_path)]
    failed: dict[str, int] = {}
    notes = Notes()
    _stop_children(children, notes, failed)  # type: ignore[arg-type]
    assert failed == {"scorer": 3}
    assert "non-zero exit codes: {'scorer': 3}" in notes.lines[0]


class _InterruptedWait:
    """A process whose first wait() is cut by a second Ctrl-C."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc, self._cut = proc, False

    def __getattr__(self, name: str) -> object:
        return getattr(self._proc, name)

    def wait(self, timeout: float | None = None) -> int:
        if not self._cut:
            self._cut = True
            raise KeyboardInterrupt
        return self._proc.wait(timeout)


def test_a_second_interrupt_while_stopping_leaves_no_component_running(
        tmp_path: Path) -> None:
    """The wait was cut short after SIGTERM: a component that ignores it kept running."""
    import pytest

    from stream_app.demo.processes import stop_all

    stubborn = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    child = Child(name="trainer", proc=_InterruptedWait(stubborn),  # type: ignore[arg-type]
                  metrics_url="", log_file=tmp_path / "trainer.log")
    with pytest.raises(KeyboardInterrupt):
        stop_all([child])
    assert stubborn.poll() is not None  # killed, not left behind
