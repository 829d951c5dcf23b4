"""Two trainers in one group: partitions move twice, no event lost or applied twice.

A starts alone; B joins (an eager range rebalance: some of A's partitions move
to B, which must reload their rows from the changelog first); then A is SIGKILLed
mid-run and never restarted (after the session timeout its partitions move to
B, whose restore waits for A's open transaction to be aborted by the broker:
`transaction.timeout.ms`, 30 s by default). More events are produced after
each move, so a trainer that learned on stale rows would publish user rows
with too few updates.

Audit on user rows only: both trainers keep their own copy of item rows and
the last publisher wins (a documented limitation of multi-trainer mode, see
docs/RELIABILITY.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream_app.config import KafkaConfig
from stream_app.sources.generate import generate
from tests.integration.kafka_helpers import wait_until
from tests.reliability.harness import (
    audit,
    committed_total,
    end_total,
    expected_user_updates,
    produce,
    row_history,
)
from tests.reliability.processes import TrainerProc

GROUP = "rel-two"


def _drained(kafka: KafkaConfig) -> bool:
    topics = [kafka.topics.clicks, kafka.topics.purchases]
    return committed_total(kafka, GROUP, topics) >= end_total(kafka, topics)


def _assert_user_rows_exact(kafka: KafkaConfig, stream: list[Any]) -> Any:
    """Every user row's `updates` equals that user's valid events; returns the audit."""
    valid = [r.event for r in stream if r.event is not None]
    got = audit(kafka)
    want = expected_user_updates(valid)
    wrong = sorted((u for u in want if got.users.get(u) != want[u]), key=lambda u: want[u])
    assert not wrong, (f"{len(wrong)} users wrong, e.g. {wrong[-1]} want {want[wrong[-1]]}: "
                       f"{row_history(kafka, 'user:' + wrong[-1])}")
    assert got.users == want
    return got


def test_partitions_move_between_trainers_without_loss_or_double_counting(
        make_kafka: Any, tmp_path: Path, trainers: list[TrainerProc]) -> None:
    kafka = make_kafka(partitions=4)
    topics = [kafka.topics.clicks, kafka.topics.purchases]
    stream = list(generate(9_000, n_users=300, n_items=200, seed=21))
    parts = [stream[:3_000], stream[3_000:6_000], stream[6_000:]]
    a = TrainerProc(kafka, tmp_path, instance_id="trainer-a", group_id=GROUP, batch_max=50)
    b = TrainerProc(kafka, tmp_path, instance_id="trainer-b", group_id=GROUP, batch_max=50)
    trainers += [a, b]

    produce(kafka, parts[0])
    a.start()
    wait_until(lambda: committed_total(kafka, GROUP, topics) > 0, timeout=120,
               what="trainer A to commit")
    # Step 1. B joins: some partitions move from A to B.
    b.start()
    wait_until(lambda: "assigned partitions=[(" in b.log_text(), timeout=120,
               what="B to get partitions")
    produce(kafka, parts[1])
    wait_until(lambda: committed_total(kafka, GROUP, topics) > 3_500, timeout=120,
               what="both trainers to progress")
    # Step 2. A dies with whatever it had open; B takes everything over.
    assert a.alive(), a.log_text()[-3000:]
    a.kill9()
    produce(kafka, parts[2])
    wait_until(lambda: _drained(kafka), timeout=240, interval=0.5,
               what="B to drain every partition")
    assert b.alive(), b.log_text()[-3000:]
    assert b.terminate() == 0, b.log_text()[-3000:]

    log_b = b.log_text()
    assert log_b.count("newly assigned and the changelog is not ours alone") >= 1, log_b[-3000:]
    got = _assert_user_rows_exact(kafka, stream)
    assert got.user_updates == sum(1 for r in stream if r.event is not None)


def test_a_trainer_back_from_its_snapshot_beside_another_publishes_only_its_users(
        make_kafka: Any, tmp_path: Path, trainers: list[TrainerProc]) -> None:
    """A's snapshot was written while it owned every partition, so its replay buffer holds
    every user's events. Back beside B, replaying them would republish B's users from A's
    stale copies, over B's newer rows."""
    kafka = make_kafka(partitions=4)
    stream = list(generate(6_000, n_users=120, n_items=100, seed=23))
    parts = [stream[:2_000], stream[2_000:4_000], stream[4_000:]]
    snap = ["--snapshot-dir", str(tmp_path / "a-snapshots")]
    a = TrainerProc(kafka, tmp_path, instance_id="trainer-a", group_id=GROUP, batch_max=50,
                    exit_when_idle=3.0, extra=snap)
    b = TrainerProc(kafka, tmp_path, instance_id="trainer-b", group_id=GROUP, batch_max=50)
    trainers += [a, b]

    produce(kafka, parts[0])
    a.start()
    assert a.wait(timeout=180) == 0, a.log_text()[-3000:]  # alone: a snapshot at its stop
    b.start()
    produce(kafka, parts[1])
    wait_until(lambda: _drained(kafka), timeout=180, interval=0.5, what="B to drain")
    a.exit_when_idle = None
    a.start()  # restores from its snapshot plus B's rows after it, then takes half
    wait_until(lambda: "assigned partitions=[(" in a.log_text(since_start=True), timeout=120,
               what="A to get partitions")
    produce(kafka, parts[2])
    wait_until(lambda: _drained(kafka), timeout=240, interval=0.5, what="both to drain")
    assert a.terminate() == 0, a.log_text()[-3000:]
    assert b.terminate() == 0, b.log_text()[-3000:]

    assert "loaded snapshot" in a.log_text(since_start=True), a.log_text()[-3000:]
    _assert_user_rows_exact(kafka, stream)
