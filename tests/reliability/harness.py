"""Real processes and a broker we can break: the reliability tests' tools.

- `TrainerProc` runs `stream-app trainer` as a child process (real argv, real
  signals, its own log file) so a test can `kill -9` it at any moment;
- `ControlledBroker` is a local KRaft broker the test owns: stop it (SIGTERM
  or SIGKILL) and start it again on the same port and data;
- the audit reads the committed `embeddings` changelog and `events-dlq` back
  (read_committed), the way a user of the product sees them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream_app.codec import decode_dlq, decode_embedding, is_meta_key
from stream_app.config import KafkaConfig
from stream_app.core import LearnerConfig
from stream_app.events import DlqRecord, EmbeddingRow, Event
from stream_app.kafka import broker
from stream_app.kafka.consumer import read_to_end
from stream_app.replay import produce_records
from stream_app.sources import RawRecord
from tests.integration.kafka_helpers import wait_until

# Small and fast on 2 shared CPU cores; the same settings go to every trainer
# process (-L flags) and to the learners the tests restore in-process.
LEARNER = LearnerConfig(dim=8, num_sampled_negatives=16, eval_max_items=1000)
LEARNER_FLAGS = ("-L", "dim=8", "-L", "num_sampled_negatives=16", "-L", "eval_max_items=1000")
_PORT_RE = re.compile(rb"metrics_http listening host=\S+ port=(\d+)")


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
class TrainerProc:
    """One `stream-app trainer` child process; every (re)start appends to `log_path`."""

    kafka: KafkaConfig
    workdir: Path
    instance_id: str = "trainer-0"
    group_id: str = "rel-trainer"
    batch_max: int = 100
    exit_when_idle: float | None = None
    extra: Sequence[str] = ()
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log_offset: int = 0
    kills: int = field(default=0)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.instance_id}.log"

    @property
    def stats_path(self) -> Path:
        return self.workdir / f"{self.instance_id}-stats.jsonl"

    def argv(self) -> list[str]:
        # faulthandler on SIGUSR1: `dump_stacks()` shows where a stuck trainer is.
        boot = ("import faulthandler, runpy, signal; faulthandler.register(signal.SIGUSR1); "
                "runpy.run_module('stream_app.cli', run_name='__main__')")
        argv = [sys.executable, "-c", boot, "trainer", *kafka_flags(self.kafka),
                "--group-id", self.group_id, "--instance-id", self.instance_id,
                "--metrics-port", "0", "--device", "cpu", "--batch-max", str(self.batch_max),
                "--batch-wait-ms", "100", "--stats-file", str(self.stats_path), *LEARNER_FLAGS]
        if self.exit_when_idle is not None:
            argv += ["--exit-when-idle", str(self.exit_when_idle)]
        return [*argv, *self.extra]

    def start(self) -> TrainerProc:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts} =====\n".encode())
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                         stdin=subprocess.DEVNULL, env=child_env())
        self.starts += 1
        return self

    def log_text(self, since_start: bool = False) -> str:
        data = self.log_path.read_bytes() if self.log_path.exists() else b""
        return data[self.log_offset if since_start else 0:].decode(errors="replace")

    def metrics_port(self, timeout: float = 60.0) -> int:
        def port() -> int | None:
            found = _PORT_RE.findall(self.log_path.read_bytes()[self.log_offset:])
            return int(found[-1]) if found else None

        found = wait_until(port, timeout=timeout, what=f"{self.instance_id} metrics port")
        assert found is not None
        return found

    def dump_stacks(self) -> str:
        """Every thread's Python stack, via faulthandler (for failure messages)."""
        if not self.alive():
            return ""
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
            raise AssertionError(f"{self.instance_id} did not exit within {timeout}s; log tail:\n"
                                 f"{self.log_text()[-3000:]}") from None

    def stop_quietly(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(30)


class ControlledBroker:
    """A broker this test owns: stop it any way it likes, start it on the same port and data."""

    def __init__(self, state_dir: Path, **settings: object) -> None:
        self.settings = broker.BrokerSettings(port=0, state_dir=state_dir, keep_data=True,
                                              **settings)  # type: ignore[arg-type]
        self.bootstrap = ""

    def start(self) -> str:
        self.bootstrap = broker.start(self.settings).bootstrap_servers
        return self.bootstrap

    @property
    def pid(self) -> int:
        return int(self.settings.pid_file.read_text())

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Send `sig` and wait until the process is gone (a clean stop takes seconds)."""
        pid = self.pid
        os.kill(pid, sig)
        wait_until(lambda: broker.running(self.settings) is None, timeout=timeout,
                   what=f"broker pid={pid} to exit after {sig.name}")

    def close(self) -> None:
        broker.stop(self.settings)


def produce(kafka: KafkaConfig, records: Iterable[RawRecord]) -> None:
    produce_records(kafka, records, total=None, rate=0, progress=False, label="rel-test")


def read_all(kafka: KafkaConfig, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every committed (key, value) of `topic`, with the test's client settings (SASL)."""
    return [(r.key, r.value) for chunk in read_to_end(kafka, topic, client_id="rel-audit")
            for r in chunk]


def latest_rows(kafka: KafkaConfig) -> dict[str, EmbeddingRow | None]:
    rows: dict[str, EmbeddingRow | None] = {}
    for key, value in read_all(kafka, kafka.topics.embeddings):
        if key is None or is_meta_key(key):
            continue
        rows[key.decode()] = decode_embedding(key, value)
    return rows


def dlq_records(kafka: KafkaConfig) -> list[DlqRecord]:
    return [decode_dlq(v) for _, v in read_all(kafka, kafka.topics.dlq) if v is not None]


@dataclass(frozen=True)
class Audit:
    """Update counts per row, as published; `user_updates` is what the events must add to."""

    users: dict[str, int]
    items: dict[str, int]

    @property
    def user_updates(self) -> int:
        return sum(self.users.values())


def audit(kafka: KafkaConfig) -> Audit:
    rows = latest_rows(kafka)
    users = {k[5:]: r.updates for k, r in rows.items() if k.startswith("user:") and r}
    items = {k[5:]: r.updates for k, r in rows.items() if k.startswith("item:") and r}
    return Audit(users=users, items=items)


def expected_user_updates(events: Iterable[Event]) -> dict[str, int]:
    return dict(Counter(e.user_id for e in events))


def committed_total(kafka: KafkaConfig, group: str, topics: Sequence[str]) -> int:
    """Sum of the group's committed offsets over `topics` (how far it has got)."""
    conf = {**kafka.client, "bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
            "enable.auto.commit": False, "isolation.level": "read_committed", "log_level": 0}
    consumer = Consumer(conf)
    try:
        parts = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10)
            parts += [TopicPartition(topic, p) for p in meta.topics[topic].partitions]
        for attempt in range(50):
            try:
                committed = consumer.committed(parts, timeout=10)
                return sum(max(0, tp.offset) for tp in committed)
            except KafkaException:  # coordinator loading / moving: ask again
                if attempt == 49:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")
    finally:
        consumer.close()


def end_total(kafka: KafkaConfig, topics: Sequence[str]) -> int:
    conf = {**kafka.client, "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": "rel-ends", "log_level": 0}
    consumer = Consumer(conf)
    try:
        total = 0
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10)
            for p in meta.topics[topic].partitions:
                total += consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        return total
    finally:
        consumer.close()


def scrape(port: int, path: str = "/metrics") -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:  # noqa: S310
        return str(resp.read().decode())


def wait_for(predicate: object, timeout: float, what: str) -> object:
    return wait_until(predicate, timeout=timeout, interval=0.25, what=what)  # type: ignore[arg-type]


def now_ms() -> int:
    return int(time.time() * 1000)


def row_history(kafka: KafkaConfig, key: str) -> list[tuple[str, int]]:
    """Every committed version of one row: (model_version, updates), for failure messages."""
    out: list[tuple[str, int]] = []
    for k, value in read_all(kafka, kafka.topics.embeddings):
        if k == key.encode():
            row = decode_embedding(k, value)
            out.append((row.model_version, row.updates) if row else ("tombstone", -1))
    return out
