"""Real processes and a broker we can break: the reliability tests' tools.

- `processes.TrainerProc` / `ScorerProc` run `stream-app trainer` / `scorer`
  as child processes (real argv, real signals, own log files) so a test can
  `kill -9` them at any moment;
- `ControlledBroker` is a local KRaft broker the test owns: stop it (SIGTERM
  or SIGKILL) and start it again on the same port and data;
- the audit reads the committed `embeddings` changelog and `events-dlq` back
  (read_committed), the way a user of the product sees them.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not in the stubs' exports
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from stream_app.codec import decode_dlq, decode_embedding, is_meta_key
from stream_app.config import KafkaConfig
from stream_app.core import LearnerConfig
from stream_app.events import DlqRecord, EmbeddingRow, Event, KeyValue
from stream_app.kafka import broker
from stream_app.kafka.admin import admin_client
from stream_app.kafka.ends import read_to_end
from stream_app.replay import produce_records
from stream_app.sources import RawRecord
from tests.integration.kafka_helpers import wait_until

# Small and fast on 2 shared CPU cores; the same settings go to the learners the
# tests restore in-process as to every trainer process (processes.LEARNER_FLAGS).
LEARNER = LearnerConfig(dim=8, num_sampled_negatives=16, eval_max_items=1000)


class ControlledBroker:
    """A broker this test owns: stop it any way it likes, start it on the same port and data."""

    def __init__(self, state_dir: Path, **settings: object) -> None:
        self.settings = broker.BrokerSettings(port=0, state_dir=state_dir, keep_data=True,
                                              dies_with_caller=True,
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


def read_all(kafka: KafkaConfig, topic: str) -> list[KeyValue]:
    """Every committed (key, value) of `topic`, with the test's client settings (SASL)."""
    return [kv for chunk in read_to_end(kafka, topic, client_id="rel-audit") for kv in chunk]


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


def metric_sums(port: int) -> dict[str, float]:
    """Each sample name of `/metrics` summed over its labels, plus `name{label=value}` sums
    for every single label (`stream_app_admissions_total{table=user}`)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: Counter[str] = Counter()
    for family in text_string_to_metric_families(scrape(port)):
        for sample in family.samples:
            sums[sample.name] += sample.value
            for label, value in sample.labels.items():
                sums[f"{sample.name}{{{label}={value}}}"] += sample.value
    return dict(sums)


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


def set_max_message_bytes(kafka: KafkaConfig, value: str | None) -> None:
    """Set the topic's `max.message.bytes`, or back to the broker default (None)."""
    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    entry = ConfigEntry("max.message.bytes", value or "", incremental_operation=op)
    resource = ConfigResource(ResourceType.TOPIC, kafka.topics.embeddings,
                              incremental_configs=[entry])
    admin = admin_client(kafka)  # alive until the future resolves
    for fut in admin.incremental_alter_configs([resource]).values():
        fut.result()
