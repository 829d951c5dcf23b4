"""The input topics' partition counts at an assignment: asked again, then exit 75."""

from __future__ import annotations

from typing import Any, cast

import pytest

from stream_app.config import KafkaConfig
from stream_app.core import LearnerConfig
from stream_app.kafka.exceptions import BrokerUnavailable, KafkaEdgeError
from stream_app.trainer import TrainerConfig, make_trainer


class _Consumer:
    """Metadata that fails `failures` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.asked = 0

    def partition_counts(self, topics: list[str]) -> dict[str, int]:
        self.asked += 1
        if self.asked <= self.failures:
            raise KafkaEdgeError("cannot list topics: timed out")
        return {t: 3 for t in topics}


def _trainer() -> Any:
    return make_trainer(KafkaConfig(), TrainerConfig(metrics_port=0), LearnerConfig(dim=4))


def test_a_failed_read_is_asked_again() -> None:
    """One timed-out answer kept a lone trainer in the shared scope until the next rebalance."""
    consumer = _Consumer(failures=2)
    counts = _trainer()._input_counts(cast(Any, consumer))  # noqa: SLF001
    assert counts == {"clicks": 3, "purchases": 3} and consumer.asked == 3


def test_counts_that_stay_unreadable_stop_the_trainer_to_be_restarted() -> None:
    consumer = _Consumer(failures=3)
    with pytest.raises(BrokerUnavailable, match="partition counts failed"):
        _trainer()._input_counts(cast(Any, consumer))  # noqa: SLF001
