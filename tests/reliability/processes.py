"""`stream-app trainer` / `scorer` as child processes the reliability tests can break.

Real argv, real signals, one log file per process (every restart appends to
it). `ChildProc.supervise()` does what a supervisor (systemd, Kubernetes)
does for the trainer's watchdog: restart a process that exited with
`EXIT_STALLED`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stream_app.config import KafkaConfig
from stream_app.watchdog import EXIT_STALLED
from tests.integration.kafka_helpers import wait_until

LEARNER_FLAGS = ("-L", "dim=8", "-L", "num_sampled_negatives=16", "-L", "eval_max_items=1000")
"""Same settings as `harness.LEARNER`: small and fast on 2 shared CPU cores."""
_PORT_RE = re.compile(rb"metrics_http listening host=\S+ port=(\d+)")
# faulthandler on SIGUSR1: `dump_stacks()` shows where a stuck process is.
_BOOT = ("import faulthandler, runpy, signal; faulthandler.register(signal.SIGUSR1); "
         "runpy.run_module('stream_app.cli', run_name='__main__')")


def child_env() -> dict[str, str]:
    """The test's environment without STREAM_APP_* (flags say everything) and 1 thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_APP_")}
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return env


def kafka_flags(kafka: KafkaConfig) -> list[str]:
    out = ["--bootstrap-servers", kafka.bootstrap_servers, "--topic-prefix", kafka.topic_prefix]
    for key, value in kafka.client.items():
        out += ["-X", f"{key}={value}"]
    return out


@dataclass
class ChildProc:
    """One long-running `stream-app` child; `argv()` is the subclass's command line."""

    kafka: KafkaConfig
    workdir: Path
    name: str = ""
    extra: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_offset: int = 0
    kills: int = 0
    stall_restarts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> ChildProc:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            self.proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-c", _BOOT, *self.argv()], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env())
        self.starts += 1
        return self

    def supervise(self) -> bool:
        """Restart the process if its watchdog stopped it (status 75); True if it did."""
        if self.proc is None or self.proc.poll() != EXIT_STALLED:
            return False
        self.stall_restarts += 1
        self.start()
        return True

    def log_text(self, since_start: bool = False) -> str:
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        return data[self.log_offset if since_start else 0:].decode(errors="replace")

    def metrics_port(self, timeout: float = 60.0) -> int:
        def port() -> int | None:
            found = _PORT_RE.findall(self.log_path.read_bytes()[self.log_offset:])
            return int(found[-1]) if found else None

        found = wait_until(port, timeout=timeout, what=f"{self.name} metrics port")
        assert found is not None
        return found

    def dump_stacks(self) -> str:
        """Every thread's Python stack, via faulthandler (for failure messages)."""
        if not self.alive():
            return self.log_text()[-6000:]
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        time.sleep(1.0)
        return self.log_text()[-6000:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.kills += 1

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            raise AssertionError(f"{self.name} did not exit within {timeout}s; log tail:\n"
                                 f"{self.log_text()[-3000:]}") from None

    def stop_quietly(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(30)


@dataclass
class TrainerProc(ChildProc):
    """`stream-app trainer`; `instance_id` names it (and its log and stats files)."""

    instance_id: str = "trainer-0"
    group_id: str = "rel-trainer"
    batch_max: int = 100
    exit_when_idle: float | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.instance_id

    @property
    def stats_path(self) -> Path:
        return self.workdir / f"{self.instance_id}-stats.jsonl"

    def argv(self) -> list[str]:
        argv = ["trainer", *kafka_flags(self.kafka), "--group-id", self.group_id,
                "--instance-id", self.instance_id, "--metrics-port", "0", "--device", "cpu",
                "--batch-max", str(self.batch_max), "--batch-wait-ms", "100",
                "--stats-file", str(self.stats_path), *LEARNER_FLAGS]
        if self.exit_when_idle is not None:
            argv += ["--exit-when-idle", str(self.exit_when_idle)]
        return [*argv, *self.extra]


@dataclass
class ScorerProc(ChildProc):
    """`stream-app scorer` on one CPU thread, in group `group_id`."""

    group_id: str = "rel-scorer"

    def __post_init__(self) -> None:
        self.name = self.name or "scorer-0"

    def argv(self) -> list[str]:
        return ["scorer", *kafka_flags(self.kafka), "--group-id", self.group_id,
                "--metrics-port", "0", "--device", "cpu", "--threads", "1", *self.extra]
