"""A test run killed by SIGKILL leaves no broker behind.

Its broker is a detached JVM (its own session, so a Ctrl-C aimed at pytest is
not also a Ctrl-C to the broker); before `dies_with_caller`, a `kill -9` of
pytest left it running, holding ~1 GiB, on a reused machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stream_app.kafka.broker_process import pid_alive

STARTER = """
import sys, time
from pathlib import Path
from stream_app.kafka import broker
started = broker.start(broker.BrokerSettings(port=0, state_dir=Path(sys.argv[1]),
                                             dies_with_caller=True))
print(started.pid, flush=True)
time.sleep(600)
"""


def test_the_broker_of_a_killed_test_run_stops(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    owner = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path / "broker")],  # noqa: S603
                             env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline() if owner.stdout else ""
        assert line.strip().isdigit(), f"the broker did not start (owner exit {owner.poll()})"
        pid = int(line)
        assert pid_alive(pid)
    finally:
        owner.kill()  # SIGKILL: no finally, no atexit runs in the owner
        owner.wait()
    deadline = time.monotonic() + 60  # the broker's own clean shutdown on SIGTERM
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = pid_alive(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert not alive, "the broker outlived the process that started it"
