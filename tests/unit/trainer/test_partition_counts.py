"""The input topics' partition counts at an assignment: asked again, then exit 75. Before a
snapshot: asked once, and unreadable, the snapshot is skipped."""

from __future__ import annotations

from pathlib import Path
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

    def owns_all(self, _counts: dict[str, int]) -> bool:
        return True

    def partition_counts(self, topics: list[str]) -> dict[str, int]:
        self.asked += 1
        if self.asked <= self.failures:
            raise KafkaEdgeError("cannot list topics: timed out")
        return {t: 3 for t in topics}


def _trainer(**cfg: Any) -> Any:
    return make_trainer(KafkaConfig(), TrainerConfig(metrics_port=0, **cfg), LearnerConfig(dim=4))


def test_a_failed_read_is_asked_again() -> None:
    """One timed-out answer kept a lone trainer in the shared scope until the next rebalance."""
    consumer = _Consumer(failures=2)
    counts = _trainer()._input_counts(cast(Any, consumer))  # noqa: SLF001
    assert counts == {"clicks": 3, "purchases": 3} and consumer.asked == 3


def test_counts_that_stay_unreadable_stop_the_trainer_to_be_restarted() -> None:
    consumer = _Consumer(failures=3)
    with pytest.raises(BrokerUnavailable, match="partition counts failed"):
        _trainer()._input_counts(cast(Any, consumer))  # noqa: SLF001


@pytest.mark.parametrize("stopping", [True, False])
def test_unreadable_counts_skip_a_snapshot_and_do_not_stop_the_trainer(
        stopping: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A stop (SIGTERM) during a broker outage took three 10 s metadata waits, then exited
    75 instead of 0; an idle trainer due a snapshot exited where one without rode it out."""
    trainer = _trainer(snapshot_dir=str(tmp_path))
    # due: a commit since the last snapshot, and an interval ago
    trainer._unsnapshotted, trainer._snapshot_at = True, 0.0  # noqa: SLF001
    consumer = _Consumer(failures=3)
    trainer._snapshot(cast(Any, consumer), stopping=stopping)  # noqa: SLF001
    assert consumer.asked == 1 and "snapshot skipped" in caplog.text
    assert not list(tmp_path.iterdir())
