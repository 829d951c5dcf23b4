"""Unique topics per test on the session's real broker (`bootstrap`, tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from stream_app.config import KafkaConfig
from stream_app.kafka.admin import TopicPlan, create_topics, delete_topics


@pytest.fixture
def make_kafka(bootstrap: str) -> Iterator[Callable[..., KafkaConfig]]:
    """Factory: a KafkaConfig with a unique topic prefix and its topics created."""
    made: list[KafkaConfig] = []

    def factory(partitions: int = 3, create: bool = True) -> KafkaConfig:
        kafka = KafkaConfig(bootstrap_servers=bootstrap,
                            topic_prefix=f"t{uuid.uuid4().hex[:10]}.")
        if create:
            create_topics(kafka, TopicPlan(event_partitions=partitions,
                                           embeddings_partitions=partitions,
                                           request_partitions=partitions))
        made.append(kafka)
        return kafka

    yield factory
    for kafka in made:
        delete_topics(kafka, list(kafka.topics.all()))


@pytest.fixture
def kafka(make_kafka: Callable[..., KafkaConfig]) -> KafkaConfig:
    return make_kafka()
