"""`commit_batch` against a real broker: a topic that refuses the batch's rows aborts it.

librdkafka marks the transaction "must abort" as soon as one record fails delivery,
and from then on `produce()` answers _STATE without saying that an abort is required.
A batch large enough that the first failure arrives while it is still producing
(about 2,000 rows) used to stop the trainer with exit 1 and its transaction open.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream_app.config import KafkaConfig
from stream_app.kafka.clients import make_consumer, make_producer
from stream_app.kafka.transaction import OutRecord, TxnOutcome, commit_batch
from tests.integration.kafka_helpers import read_topic


@pytest.mark.parametrize("rows", [50, 20_000])
def test_rows_the_topic_refuses_abort_the_batch_whatever_its_size(
        kafka: KafkaConfig, rows: int) -> None:
    small = f"{kafka.topic_prefix}small"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for done in admin.create_topics([NewTopic(small, 3, 1,
                                              config={"max.message.bytes": "128"})]).values():
        done.result(30)
    producer = make_producer(kafka, "txn-test", transactional_id=f"{kafka.topic_prefix}txn")
    producer.init_transactions(30)
    consumer = make_consumer(kafka, "txn-test-consumer", f"{kafka.topic_prefix}txn-group")
    try:
        records = [OutRecord(small, b"user:%d" % n, os.urandom(300)) for n in range(rows)]
        outcome = commit_batch(producer, consumer, records, [TopicPartition(small, 0, 1)],
                               starts={(small, 0): 0}, timeout_s=20)
        assert outcome is TxnOutcome.ABORTED
        # Nothing of it is visible: no offset committed, no record read_committed.
        assert consumer.committed([TopicPartition(small, 0)], timeout=10)[0].offset < 0
        assert read_topic(kafka.bootstrap_servers, small, timeout=3) == []  # (the abort's
        # markers are never delivered, so the read runs to its timeout)
        # The producer is usable again: the next transaction commits.
        ok = [OutRecord(kafka.topics.embeddings, b"user:u1", b"{}")]
        assert commit_batch(producer, consumer, ok, [], starts={},
                            timeout_s=20) is TxnOutcome.COMMITTED
        assert [(m.key(), m.value()) for m in read_topic(kafka.bootstrap_servers,
                                                         kafka.topics.embeddings)] \
            == [(b"user:u1", b"{}")]
    finally:
        consumer.close()


def test_a_transaction_the_broker_timed_out_is_given_up_and_the_next_one_commits(
        kafka: KafkaConfig) -> None:
    """The broker aborts a transaction open past transaction.timeout.ms and bumps the
    producer's epoch (its abort check runs every 10 s). Whatever librdkafka makes of it,
    abortable or fenced, the batch is given up and the publisher commits the next one:
    fenced, it stopped the trainer with exit 1, with no newer instance to yield to."""
    from stream_app.kafka.consumer import GroupConsumer
    from stream_app.kafka.transaction import TransactionalPublisher

    short = KafkaConfig(bootstrap_servers=kafka.bootstrap_servers,
                        topic_prefix=kafka.topic_prefix,
                        client={"transaction.timeout.ms": "2000"})
    publisher = TransactionalPublisher(short, transactional_id=f"{kafka.topic_prefix}slow",
                                       client_id="slow")
    consumer = GroupConsumer(short, client_id="slow-in", group_id=f"{kafka.topic_prefix}slow",
                             topics=[kafka.topics.clicks])
    row = OutRecord(kafka.topics.embeddings, b"user:u1", b"{}")

    def slow() -> Iterator[OutRecord]:
        yield row
        time.sleep(14.0)  # past the timeout and the broker's next check
        yield row

    try:
        first = publisher.commit(consumer, slow(), {}, {})
        assert first is TxnOutcome.ABORTED
        assert publisher.commit(consumer, [row], {}, {}) is TxnOutcome.COMMITTED
        # The given-up batch's row is not readable; the committed one's is, once.
        assert len(read_topic(kafka.bootstrap_servers, kafka.topics.embeddings)) == 1
    finally:
        publisher.close()
        consumer.close()
