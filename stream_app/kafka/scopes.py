"""Which librdkafka settings only consumers, or only producers, read.

`-X`, `--kafka-config` and `[kafka.client]` settings go to every client a command
makes, and librdkafka logs a CONFWARN line for each one that a client of the other
kind ignores (`fetch.wait.max.ms` on every producer, say). Each client now gets only
the settings of its kind. The sets are librdkafka 2.16.0's property table (global and
topic properties, `rd_kafka_conf_properties_show`); a unit test compares them with
the table of the library `confluent_kafka` loads, so an upgrade that moves a
property fails there rather than dropping a setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

V = TypeVar("V")

CONSUMER_ONLY = frozenset("""
    auto.commit.enable auto.commit.interval.ms auto.offset.reset check.crcs
    consume.callback.max.messages consume_cb coordinator.query.interval.ms
    enable.auto.commit enable.auto.offset.store enable.partition.eof fetch.error.backoff.ms
    fetch.max.bytes fetch.message.max.bytes fetch.min.bytes fetch.queue.backoff.ms
    fetch.wait.max.ms group.id group.instance.id group.protocol group.protocol.type
    group.remote.assignor heartbeat.interval.ms isolation.level max.partition.fetch.bytes
    max.poll.interval.ms max.poll.records offset.store.method offset.store.path
    offset.store.sync.interval.ms offset_commit_cb partition.assignment.strategy
    queued.max.messages.kbytes queued.min.messages rebalance_cb session.timeout.ms
    share.acknowledgement.mode
""".split())
PRODUCER_ONLY = frozenset("""
    acks batch.num.messages batch.size compression.codec compression.level compression.type
    delivery.report.only.error delivery.timeout.ms dr_cb dr_msg_cb enable.gapless.guarantee
    enable.idempotence linger.ms message.send.max.retries message.timeout.ms msg_order_cmp
    partitioner partitioner_cb produce.offset.report queue.buffering.backpressure.threshold
    queue.buffering.max.kbytes queue.buffering.max.messages queue.buffering.max.ms
    queuing.strategy request.required.acks request.timeout.ms retries
    sticky.partitioning.linger.ms transaction.timeout.ms transactional.id
""".split())


def for_producer(settings: Mapping[str, V]) -> dict[str, V]:
    """`settings` without the consumer-only ones (admin clients are producers too).

    >>> for_producer({"fetch.wait.max.ms": "10", "linger.ms": "2", "client.rack": "a"})
    {'linger.ms': '2', 'client.rack': 'a'}
    """
    return {k: v for k, v in settings.items() if k not in CONSUMER_ONLY}


def for_consumer(settings: Mapping[str, V]) -> dict[str, V]:
    """`settings` without the producer-only ones."""
    return {k: v for k, v in settings.items() if k not in PRODUCER_ONLY}
