"""The demo's exit status counts how its trainer and scorer stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from stream_app.demo.processes import Child
from stream_app.demo.run import _stop_children
from tests.integration.kafka_helpers import wait_until

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


PARENT = ("import sys, time\n"
          "from pathlib import Path\n"
          "from stream_app.demo.processes import start_component\n"
          "child = start_component('scorer', ['--bootstrap-servers', '127.0.0.1:1'],\n"
          "                        log_dir=Path(sys.argv[1]))\n"
          "print(child.proc.pid, flush=True)\n"
          "time.sleep(60)\n")


def test_a_component_is_told_to_stop_when_the_demo_is_killed(tmp_path: Path) -> None:
    """In its own session, it outlived a demo killed by SIGKILL (an OOM kill, a CI
    timeout). The scorer here waits for a broker at 127.0.0.1:1 that never answers and
    then exits on its own; its log says whether the kernel's SIGTERM reached it first."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path)],  # noqa: S603
                              stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    log = tmp_path / "scorer.log"
    wait_until(lambda: "metrics_http listening" in log.read_text(), timeout=60,
               what="the scorer to start")
    parent.kill()
    parent.wait()
    wait_until(lambda: not Path(f"/proc/{child}").exists()
               or Path(f"/proc/{child}/stat").read_text().split()[2] == "Z",
               timeout=60, what="the scorer to exit")
    assert "signal=SIGTERM" in log.read_text()
