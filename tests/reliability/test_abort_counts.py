"""An aborted transaction counts nothing: the trainer's counters move only on commit.

The learner's step has already run when a transaction aborts; the batch is
read again and learned again after the restore. If events, admissions or
evictions were counted at the step, every abort would count them twice and
`stream_app_events_total` would no longer add up to what was read.

The trainer first commits half of the stream. The item table is capped
below the stream's items, so the restore after each abort starts at the cap
and the aborted batches evict (a first batch, learned into empty tables,
never does: the rows it would evict are its own). Then `embeddings` is made
unwritable (`max.message.bytes` 128, as in test_unwritable_embeddings) until
the trainer has aborted, then writable again. After it catches up, its
counters must equal the stream's: each record once, each user admitted once,
and item admissions less evictions equal to the item rows on `embeddings`.
"""

from __future__ import annotations

from pathlib import Path

from stream_app.config import KafkaConfig
from stream_app.sources.generate import generate
from tests.integration.kafka_helpers import wait_until
from tests.reliability.harness import (
    audit,
    committed_total,
    end_total,
    metric_sums,
    produce,
    set_max_message_bytes,
)
from tests.reliability.processes import TrainerProc

GROUP = "rel-abort-counts"
MAX_ITEMS = 20
"""Under the stream's 100 items."""


def test_counters_equal_the_stream_after_aborted_transactions(
        make_kafka: object, tmp_path: Path, trainers: list[TrainerProc]) -> None:
    kafka: KafkaConfig = make_kafka()  # type: ignore[operator]
    topics = [kafka.topics.clicks, kafka.topics.purchases]
    stream = list(generate(1_500, n_users=150, n_items=100, seed=43))
    first, second = stream[:750], stream[750:]
    trainer = TrainerProc(kafka, tmp_path, group_id=GROUP, batch_max=100,
                          extra=("-X", "transaction.timeout.ms=8000", "--stall-timeout", "120",
                                 "-L", f"max_items={MAX_ITEMS}"))
    trainers.append(trainer)
    produce(kafka, first)
    trainer.start()
    port = trainer.metrics_port()
    wait_until(lambda: committed_total(kafka, GROUP, topics) >= len(first),
               timeout=120, interval=0.5, what="the first half committed")

    set_max_message_bytes(kafka, "128")
    aborts = metric_sums(port).get("stream_app_transaction_aborts_total", 0)
    produce(kafka, second)
    wait_until(lambda: metric_sums(port).get("stream_app_transaction_aborts_total", 0)
               >= aborts + 2, timeout=90, interval=0.5, what="two aborted transactions")
    assert committed_total(kafka, GROUP, topics) == len(first)

    set_max_message_bytes(kafka, None)
    wait_until(lambda: committed_total(kafka, GROUP, topics) >= end_total(kafka, topics),
               timeout=120, interval=0.5, what="the trainer to catch up")
    # Counted just after the commit returns, so the offsets may lead the counters for
    # a moment: wait for them to reach the stream's size (a double count passes this
    # wait and fails the exact checks below).
    wait_until(lambda: metric_sums(port)["stream_app_events_total"] >= len(stream),
               timeout=30, interval=0.5, what="the last commit's counts")
    assert trainer.alive(), trainer.log_text()[-3000:]  # one process (no watchdog exit):
    sums = metric_sums(port)  # its counters cover the whole run
    assert trainer.terminate() == 0, trainer.log_text()[-3000:]
    got = audit(kafka)
    evicted = sums.get("stream_app_evictions_total{table=item}", 0)
    assert sums["stream_app_events_total"] == len(stream)
    assert sums["stream_app_events_total{outcome=applied}"] == got.user_updates
    assert sums["stream_app_admissions_total{table=user}"] == len(got.users)
    assert evicted > 0 and 0 < len(got.items) <= MAX_ITEMS
    assert sums["stream_app_admissions_total{table=item}"] - evicted == len(got.items)
    print(f"abort counts: aborts={sums['stream_app_transaction_aborts_total']:.0f}, "
          f"events={len(stream)}, users={len(got.users)}, items={len(got.items)}, "
          f"item evictions={evicted:.0f}")
