"""A stop during the start's restore ends the trainer at once, without joining the group.

An open transaction on `embeddings` holds the restore (a read_committed read stops
before it until it ends, 60 s here), as a big changelog would. A SIGTERM then waited
for the whole restore, and the trainer joined the group only to leave it.
"""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import Producer

from stream_app.config import KafkaConfig
from tests.integration.kafka_helpers import wait_until
from tests.reliability.harness import metric_sums
from tests.reliability.processes import TrainerProc


def test_a_stop_during_the_restore_exits_at_once_without_joining_the_group(
        make_kafka: object, tmp_path: Path, trainers: list[TrainerProc]) -> None:
    kafka: KafkaConfig = make_kafka()  # type: ignore[operator]
    holder = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                       "transactional.id": f"{kafka.topic_prefix}holder",
                       "transaction.timeout.ms": 60_000})
    holder.init_transactions(30)
    holder.begin_transaction()
    holder.produce(kafka.topics.embeddings, key=b"user:u1", value=b"{}")
    holder.flush(30)
    try:
        trainer = TrainerProc(kafka, tmp_path, group_id="rel-stop-restore")
        trainers.append(trainer)
        trainer.start()
        port = trainer.metrics_port()
        wait_until(lambda: metric_sums(port).get("stream_app_restores_total", 0) >= 1,
                   timeout=60, interval=0.2, what="the restore to begin")
        assert trainer.alive()
        # Held by the open transaction for up to 60 s; a stop comes within a second of a
        # chunk, after the restore's wait of up to 5 s for transaction markers.
        assert trainer.terminate(timeout=30) == 0, trainer.log_text()[-3000:]
    finally:
        holder.abort_transaction(30)
    text = trainer.log_text()
    assert "stopped during a restore" in text, text[-3000:]
    assert "assigned partitions" not in text, "it joined the group after the stop"
