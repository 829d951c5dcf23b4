"""The real broker: started once per session (or reused), unique topics per test.

Reuse a running broker with STREAM_APP_BOOTSTRAP_SERVERS=HOST:PORT; otherwise a
single-node KRaft broker is started from the Maven jars on a free port and
stopped at the end. There is no skip: without a broker these tests fail loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from stream_app.config import KafkaConfig
from stream_app.kafka import broker
from stream_app.kafka.admin import TopicPlan, create_topics, delete_topics, wait_for_broker


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("STREAM_APP_BOOTSTRAP_SERVERS")
    if given:
        wait_for_broker(given, timeout_s=30)
        yield given
        return
    settings = broker.BrokerSettings(port=0, state_dir=tmp_path_factory.mktemp("broker"))
    try:
        running = broker.start(settings)
        yield running.bootstrap_servers
    finally:
        broker.stop(settings)


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
