"""`GroupConsumer.settle` waits out a previous owner's open transaction (KIP-447).

The trainer calls it on assign before it reads the changelog's end: a
previous owner dropped from the group between its `send_offsets_to_transaction`
and its commit still has rows on their way, and its offsets are not stable
yet. The open transaction is made here by a transactional producer that sent
offsets for the group and has not committed.
"""

from __future__ import annotations

import threading

from confluent_kafka import Consumer, Producer
from confluent_kafka import TopicPartition as _TP

from stream_app.config import KafkaConfig
from stream_app.kafka.consumer import GroupConsumer


def _committed(kafka: KafkaConfig, group: str, topic: str) -> int:
    reader = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group,
                       "isolation.level": "read_committed"})
    try:
        return int(reader.committed([_TP(topic, 0)], timeout=30)[0].offset)
    finally:
        reader.close()


def test_settle_returns_only_once_the_open_transaction_has_committed(
        kafka: KafkaConfig) -> None:
    topic, group = kafka.topics.clicks, f"{kafka.topic_prefix}settle"
    owner = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                      "transactional.id": f"{kafka.topic_prefix}previous-owner"})
    owner.init_transactions(30)
    member = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    owner.begin_transaction()
    owner.produce(kafka.topics.embeddings, key=b"user:u1", value=b"{}")
    owner.send_offsets_to_transaction([_TP(topic, 0, 7)], member.consumer_group_metadata(), 30)
    member.close()

    consumer = GroupConsumer(kafka, client_id="settle", group_id=group, topics=[topic])
    settled = threading.Event()
    waiting = threading.Thread(target=lambda: (consumer.settle([(topic, 0)]), settled.set()))
    try:
        waiting.start()
        # The broker answers UNSTABLE_OFFSET_COMMIT while the transaction is open;
        # returning now would read the changelog's end before the owner's rows.
        assert not settled.wait(3.0), "settle returned while the transaction was open"
        owner.commit_transaction(30)
        assert settled.wait(30.0), "settle did not return after the commit"
        assert _committed(kafka, group, topic) == 7
        # Nothing open: it returns at once.
        quick = threading.Event()
        threading.Thread(target=lambda: (consumer.settle([(topic, 0)]), quick.set())).start()
        assert quick.wait(10.0)
    finally:
        if not settled.is_set():  # failed while open: end it, or settle waits its 60 s
            owner.abort_transaction(30)
        waiting.join(timeout=30)
        consumer.close()
