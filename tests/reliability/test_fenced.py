"""A second trainer started by mistake with the same instance id fences the first.

The twin's `init_transactions` bumps the id's epoch, so the first trainer's next
transaction fails: it must stop with a message that says so (exit 1, no traceback),
and a trainer started again with that id carries on from the committed offsets with
exact counts. Found by a walkthrough: the first process ended in `SystemError:
SpotCheck.report returned a result with an exception set`, raised while its fenced
producer was closed, which replaced the fencing error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream_app.sources.generate import generate
from tests.integration.kafka_helpers import wait_until
from tests.reliability.harness import (
    audit,
    committed_total,
    end_total,
    expected_user_updates,
    produce,
)
from tests.reliability.processes import TrainerProc

GROUP = "rel-fenced"


def test_a_trainer_fenced_by_its_twin_says_so_and_a_restart_carries_on(
        make_kafka: Any, tmp_path: Path, trainers: list[TrainerProc]) -> None:
    kafka = make_kafka()
    topics = [kafka.topics.clicks, kafka.topics.purchases]
    stream = list(generate(3_000, n_users=200, n_items=100, seed=5))
    produce(kafka, stream[:1_000])
    first = TrainerProc(kafka, tmp_path / "first", group_id=GROUP, batch_max=50)
    twin = TrainerProc(kafka, tmp_path / "twin", group_id=GROUP, batch_max=50,
                       exit_when_idle=3.0)
    trainers += [first, twin]
    first.start()
    wait_until(lambda: committed_total(kafka, GROUP, topics) >= end_total(kafka, topics),
               timeout=120, what="the first trainer to commit its input")
    twin.start()  # init_transactions: the first one's producer is fenced from now on
    produce(kafka, stream[1_000:2_000])
    assert twin.wait(120) == 0, twin.log_text()[-3000:]
    produce(kafka, stream[2_000:])  # the first takes every partition back, and must commit
    assert first.wait(120) == 1, first.log_text()[-3000:]
    log = first.log_text()
    assert "fenced" in log and "Traceback" not in log and "SystemError" not in log, log[-3000:]
    again = TrainerProc(kafka, tmp_path / "again", group_id=GROUP, batch_max=50,
                        exit_when_idle=4.0)
    trainers.append(again)
    again.start()
    assert again.wait(300) == 0, again.log_text()[-3000:]
    assert committed_total(kafka, GROUP, topics) >= end_total(kafka, topics)
    assert audit(kafka).users == expected_user_updates(
        [r.event for r in stream if r.event is not None])
