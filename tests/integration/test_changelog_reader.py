"""Reading the changelog to its end must not stop at another producer's open transaction."""

from __future__ import annotations

import time

from confluent_kafka import Producer

from stream_app.config import KafkaConfig
from stream_app.kafka.consumer import GroupConsumer
from stream_app.kafka.ends import read_to_end
from tests.integration.kafka_helpers import wait_until


def _row_then_open_transaction(kafka: KafkaConfig, name: str, timeout_ms: int) -> Producer:
    """user:a (offset 0), then user:z (offset 1) in a transaction left open: that of a
    "killed trainer", open until the broker aborts it after `timeout_ms`."""
    topic = kafka.topics.embeddings
    plain = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    plain.produce(topic, key=b"user:a", value=b"1", partition=0)
    plain.flush(10)
    txn = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                    "transactional.id": f"{kafka.topic_prefix}{name}",
                    "transaction.timeout.ms": timeout_ms})
    txn.init_transactions(10)
    txn.begin_transaction()
    txn.produce(topic, key=b"user:z", value=b"never", partition=0)
    txn.flush(10)
    return txn


def test_read_to_end_waits_out_an_open_transaction_and_sees_what_follows(
        kafka: KafkaConfig) -> None:
    topic = kafka.topics.embeddings
    _row_then_open_transaction(kafka, "zombie", 3000)
    # Another trainer commits a row after it.
    live = Producer({"bootstrap.servers": kafka.bootstrap_servers,
                     "transactional.id": f"{kafka.topic_prefix}live"})
    live.init_transactions(10)
    live.begin_transaction()
    live.produce(topic, key=b"user:b", value=b"2", partition=0)
    live.commit_transaction(10)

    chunks = list(read_to_end(kafka, topic, client_id="t", stall_s=90))
    assert [kv for chunk in chunks for kv in chunk] == [(b"user:a", b"1"), (b"user:b", b"2")]
    assert [] in chunks  # the wait showed as empty chunks: a reader thread can stop there


def test_a_long_read_that_keeps_making_progress_is_not_cut_off(kafka: KafkaConfig) -> None:
    """The limit is on a read without progress, the caller's time with each chunk included.
    A fixed 600 s for the whole read stopped a restore of some 35M rows (15-18 s a
    million here) at every start: a crash loop."""
    topic = kafka.topics.embeddings
    plain = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    for n in range(40):
        plain.produce(topic, key=b"user:%d" % n, value=b"v", partition=0)
    plain.flush(10)
    rows = applied = 0
    for chunk in read_to_end(kafka, topic, client_id="t", batch=4, stall_s=5):
        rows += len(chunk)
        if chunk:
            applied += 1
            time.sleep(0.6)  # applying it
    assert rows == 40
    # At most 4 rows a chunk, 0.6 s each: the read took at least 10 x 0.6 s, past the 5 s
    # limit (else the case under test did not happen).
    assert applied * 0.6 > 5


def test_stable_end_offsets_stop_at_an_open_transaction(kafka: KafkaConfig) -> None:
    """What the trainer's rebalance check reads (`OwnWrites.keeps_learner`): a read_committed
    member's stable offsets stop where an open transaction starts, the true end does
    not; once it is aborted (its marker written) the two agree."""
    topic = kafka.topics.embeddings
    open_txn = _row_then_open_transaction(kafka, "open", 120_000)  # open until aborted below
    member = GroupConsumer(kafka, client_id="t-lso", group_id=f"{kafka.topic_prefix}lso",
                           topics=[topic])
    try:
        assert member.stable_end_offsets(topic)[0] == 1
        assert member.end_offsets(topic)[0] == 2
        open_txn.abort_transaction(10)
        wait_until(lambda: member.stable_end_offsets(topic)[0] == 3, timeout=30,
                   what="the abort marker")  # a, z, the marker
        assert member.end_offsets(topic)[0] == 3
    finally:
        member.close()
