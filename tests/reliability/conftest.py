"""Fixtures of the fault tests: a shared broker, and brokers a test may break.

`bootstrap` (session, tests/conftest.py): the shared broker, for tests that
break the *clients*; `controlled_broker` (per test): a broker in
the test's own folder that the test stops, kills and restarts on the same port
and data. Topic names are unique per test (`make_kafka`). No skips: without
Java and the broker jars these tests fail loudly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream_app.config import KafkaConfig
from stream_app.kafka.admin import TopicPlan, create_topics, delete_topics
from tests.reliability.harness import ControlledBroker
from tests.reliability.processes import ScorerProc, TrainerProc


def new_kafka(bootstrap: str, partitions: int = 3, client: dict[str, str] | None = None,
              create: bool = True) -> KafkaConfig:
    kafka = KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=f"r{uuid.uuid4().hex[:10]}.",
                        client=client or {})
    if create:
        create_topics(kafka, TopicPlan(event_partitions=partitions,
                                       embeddings_partitions=partitions,
                                       request_partitions=partitions))
    return kafka


@pytest.fixture
def make_kafka(bootstrap: str) -> Iterator[Callable[..., KafkaConfig]]:
    """Factory: a KafkaConfig on the shared broker with unique topics, created."""
    made: list[KafkaConfig] = []

    def factory(partitions: int = 3) -> KafkaConfig:
        made.append(new_kafka(bootstrap, partitions))
        return made[-1]

    yield factory
    for kafka in made:
        delete_topics(kafka, list(kafka.topics.all()))


@pytest.fixture
def controlled_broker(tmp_path: Path) -> Iterator[Callable[..., ControlledBroker]]:
    """Factory: start a broker the test owns (kwargs go to BrokerSettings, e.g. SASL)."""
    made: list[ControlledBroker] = []

    def factory(**settings: object) -> ControlledBroker:
        b = ControlledBroker(tmp_path / f"broker-{len(made)}", **settings)
        made.append(b)
        b.start()
        return b

    yield factory
    for b in made:
        b.close()


@pytest.fixture
def trainers(tmp_path: Path) -> Iterator[list[TrainerProc]]:
    """Every TrainerProc a test appends here is killed at teardown if still running."""
    procs: list[TrainerProc] = []
    yield procs
    for proc in procs:
        proc.stop_quietly()


@pytest.fixture
def scorers() -> Iterator[list[ScorerProc]]:
    """Every ScorerProc a test appends here is killed at teardown if still running."""
    procs: list[ScorerProc] = []
    yield procs
    for proc in procs:
        proc.stop_quietly()
