"""An aborted batch on partitions with no committed offset is read again from where it began.

With `-X auto.offset.reset=latest` a new trainer starts at the end of its input. An
abort before the group's first commit used to rewind those partitions to offset 0:
the history the operator chose to skip was learned after all (and, had retention
deleted offset 0, the reset would have jumped to the end and lost the batch).
"""

from __future__ import annotations

import time
from pathlib import Path

from stream_app.config import KafkaConfig
from stream_app.sources.generate import generate
from tests.integration.kafka_helpers import wait_until
from tests.reliability.harness import (
    committed_total,
    end_total,
    metric_sums,
    produce,
    scrape,
    set_max_message_bytes,
)
from tests.reliability.processes import TrainerProc

GROUP = "rel-abort-rewind"


def test_an_abort_before_the_first_commit_keeps_offset_reset_latest(
        make_kafka: object, tmp_path: Path, trainers: list[TrainerProc]) -> None:
    kafka: KafkaConfig = make_kafka()  # type: ignore[operator]
    topics = [kafka.topics.clicks, kafka.topics.purchases]
    skipped = list(generate(600, n_users=60, n_items=50, seed=5))
    new = list(generate(400, n_users=40, n_items=50, seed=6))
    produce(kafka, skipped)
    set_max_message_bytes(kafka, "128")
    trainer = TrainerProc(kafka, tmp_path, group_id=GROUP, batch_max=100,
                          extra=("-X", "auto.offset.reset=latest",
                                 "-X", "transaction.timeout.ms=8000", "--stall-timeout", "120"))
    trainers.append(trainer)
    trainer.start()
    port = trainer.metrics_port()
    wait_until(lambda: _ready(port), timeout=60, interval=0.5, what="the trainer ready")
    # Its first fetches take the end as the position; nothing exposes that, so give
    # them time. Were it too short, new events would be skipped and the count below
    # would time out.
    time.sleep(5)
    assert metric_sums(port).get("stream_app_consumer_lag_messages") == 0, \
        "the skipped history counts as lag"
    produce(kafka, new)
    wait_until(lambda: metric_sums(port).get("stream_app_transaction_aborts_total", 0) >= 1,
               timeout=90, interval=0.5, what="an aborted transaction")
    set_max_message_bytes(kafka, None)
    wait_until(lambda: committed_total(kafka, GROUP, topics) >= end_total(kafka, topics),
               timeout=120, interval=0.5, what="the trainer to catch up")
    wait_until(lambda: metric_sums(port)["stream_app_events_total"] >= len(new),
               timeout=30, interval=0.5, what="the last commit's counts")
    sums = metric_sums(port)
    assert trainer.terminate() == 0, trainer.log_text()[-3000:]
    assert sums["stream_app_events_total"] == len(new), (
        f"read {sums['stream_app_events_total']:.0f} events, not {len(new)}: some of the "
        f"{len(skipped)} from before the trainer started were read after the abort")


def _ready(port: int) -> bool:
    try:
        scrape(port, "/readyz")
        return True
    except OSError:  # 503 (HTTPError) while restoring
        return False
