"""Start the trainer and the scorer as real processes, and always stop them.

They run as `python -m stream_app.cli ...` exactly as an operator would run
them, each in its own session (so a Ctrl-C in the terminal reaches only the
demo, which then stops them in order), with output in a log file beside the
report. Stopping is SIGTERM (they finish the current batch and close their
transaction), then SIGKILL after a timeout.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stream_app.kafka.broker import free_port
from stream_app.kafka.broker_process import pdeathsig_prefix

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Child:
    """One started component: its process, /metrics URL and log file."""

    name: str
    proc: subprocess.Popen[bytes]
    metrics_url: str
    log_file: Path

    def exited(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def start_component(name: str, args: Sequence[str], *, log_dir: Path) -> Child:
    """`stream-app <name> <args> --metrics-port <free>`, output to `<log_dir>/<name>.log`.

    The kernel stops it when the thread that started it dies (`pdeathsig_prefix`):
    a demo killed by SIGKILL left its trainer and scorer running, in their own sessions.
    """
    port = free_port()
    cmd = [*pdeathsig_prefix(), sys.executable, "-m", "stream_app.cli", name, *args,
           "--metrics-port", str(port)]
    log_file = log_dir / f"{name}.log"
    with log_file.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    log.info("started component=%s pid=%d metrics_port=%d", name, proc.pid, port)
    return Child(name, proc, f"http://127.0.0.1:{port}/metrics", log_file)


def stop_all(children: Sequence[Child], timeout_s: float = 20.0) -> dict[str, int | None]:
    """SIGTERM every child, wait up to `timeout_s` for all, SIGKILL the rest; exit codes."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    try:
        for child in children:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("component=%s pid=%d ignored SIGTERM for %.0fs; killing it",
                            child.name, child.proc.pid, timeout_s)
                child.proc.kill()
                child.proc.wait(timeout=10)
    except KeyboardInterrupt:  # a second Ctrl-C: wait no more, but leave nothing running
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(timeout=10)
        raise
    return {child.name: child.proc.returncode for child in children}
