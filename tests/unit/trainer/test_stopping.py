"""A trainer that is stopping neither restores for a new assignment nor learns a batch.

A rebalance that lands as the trainer leaves its group is delivered inside
`leave_group`'s poll: its restore ran there, and when the stop ended it (or it outlasted
the leave's wait) confluent-kafka aborted the process at close (SIGABRT, seen by a
review against a real broker). And a batch polled after the stop may hold records of a
partition whose assignment was therefore not restored.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import pytest
from confluent_kafka import TopicPartition

from stream_app.config import KafkaConfig
from stream_app.core import LearnerConfig
from stream_app.kafka.consumer import GroupConsumer
from stream_app.trainer import TrainerConfig, make_trainer


class _Consumer:
    """Fails the test if the trainer asks anything of it on an assignment."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"asked the consumer for {name} while stopping")


def _trainer() -> Any:
    return make_trainer(KafkaConfig(bootstrap_servers="127.0.0.1:1"),
                        TrainerConfig(metrics_port=0), LearnerConfig(dim=4))


def test_an_assignment_while_stopping_is_left_unread(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    trainer = _trainer()
    trainer.stop.set()
    trainer._on_assign(cast(Any, _Consumer()), [("clicks", 0)])  # noqa: SLF001
    assert "assigned while stopping: left unread" in caplog.text


def test_an_assignment_met_while_leaving_the_group_is_left_unread(
        caplog: pytest.LogCaptureFixture) -> None:
    """Closing, the consumer hands no assignment to its owner (no broker needed)."""
    caplog.set_level(logging.INFO)
    handed: list[object] = []
    consumer = GroupConsumer(KafkaConfig(bootstrap_servers="127.0.0.1:1"), client_id="c",
                             group_id="g", topics=["clicks"], on_assign=handed.append)
    consumer._closing = True  # noqa: SLF001 (set by close() before it leaves the group)
    consumer._assign(cast(Any, None), [TopicPartition("clicks", 0)])  # noqa: SLF001
    assert handed == [] and "assigned while leaving the group: left unread" in caplog.text
    consumer.raw.close()


def test_a_batch_polled_as_the_stop_came_is_not_learned() -> None:
    trainer = _trainer()
    learned: list[object] = []
    trainer.process = lambda batch, *_a: learned.append(batch)

    class Polls:
        assignment = [("clicks", 0)]

        def poll_batch(self, *_a: object) -> list[str]:
            trainer.stop.set()  # SIGTERM during the poll, which assigned a partition
            return ["a record"]

    assert trainer._loop(cast(Any, Polls()), cast(Any, None)) == 0  # noqa: SLF001
    assert learned == []


def test_a_stop_during_a_rebalance_s_settle_wait_ends_it() -> None:
    """The wait for a previous owner's open transaction (up to the transaction timeout
    + 30 s) beat the watchdog but never looked at the stop."""
    from stream_app.trainer.ownership import RestoreStopped

    trainer = _trainer()

    class Settling:
        def partition_counts(self, topics: list[str]) -> dict[str, int]:
            return {t: 1 for t in topics}

        def owns_all(self, _counts: dict[str, int]) -> bool:
            return True

        def settle(self, _parts: object, *, timeout_s: float, on_wait: Any) -> None:
            on_wait()  # a 5 s wait passed: nothing yet
            trainer.stop.set()  # SIGTERM
            on_wait()
            raise AssertionError("the wait went on after the stop")

    with pytest.raises(RestoreStopped):
        trainer._on_assign(cast(Any, Settling()), [("clicks", 0)])  # noqa: SLF001
